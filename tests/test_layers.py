"""The layering holds: import-linter contracts, a control plane that runs with no torch, a complete wheel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]

# Makes `import torch` (and the rest of the model stack) fail the way it does where it is not installed.
_NO_MODEL_STACK = (
    "import sys\n"
    "for name in ('torch', 'transformers', 'peft', 'safetensors', 'numpy', 'accelerate'):\n"
    "    sys.modules[name] = None\n"
)


def _run_without_model_stack(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _NO_MODEL_STACK + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_control_plane_runs_without_the_model_stack(tmp_path: Path) -> None:
    code = (
        "import splitft_control.app as app, splitft_control.migrate\n"
        "from splitft_control.settings import ControlSettings\n"
        f"settings = ControlSettings(data_dir=r'{tmp_path}', dev_mode=True)\n"
        "app.create_app(settings)\n"
        "print('ok')\n"
    )
    result = _run_without_model_stack(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_control_plane_commands_run_without_the_model_stack() -> None:
    # The control-plane image runs these with no torch installed.
    for command in (
        ["control", "serve", "--help"],
        ["certs", "init", "--help"],
        ["control", "keys", "--help"],
    ):
        code = f"import sys\nfrom splitft.cli import main\nsys.exit(main({command!r}))\n"
        result = _run_without_model_stack(code)
        assert result.returncode == 0, (command, result.stderr)


def test_the_model_stack_block_is_real() -> None:
    # The two tests above would pass vacuously if blocking did not make torch imports fail.
    result = _run_without_model_stack("import splitft.model.loading\n")
    assert result.returncode != 0
    assert "torch" in result.stderr


def test_every_package_is_in_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {name: ROOT / folder for name, folder in config["package-dir"].items() if "." not in name}
    found = {"splitft.v1"}
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            found.add(".".join((name, *init.parent.relative_to(folder).parts)))
    assert listed == found, f"missing from pyproject: {found - listed}; not a package: {listed - found}"
