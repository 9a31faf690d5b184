"""The layering holds: import-linter contracts, a control plane that runs with no torch, a complete wheel."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import tomllib

from splitft.cli import build_parser

ROOT = Path(__file__).resolve().parents[3]

# Makes `import torch` (and the rest of the model stack) fail the way it does where it is not installed.
# numpy and safetensors are not part of it: the control plane aggregates federated rounds with them.
_NO_MODEL_STACK = (
    "import sys\nfor name in ('torch', 'transformers', 'peft', 'accelerate'):\n    sys.modules[name] = None\n"
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
    commands = (["control", "serve", "--help"], ["certs", "init", "--help"], ["control", "keys", "--help"])
    for command in commands:
        code = f"import sys\nfrom splitft.cli import main\nsys.exit(main({command!r}))\n"
        result = _run_without_model_stack(code)
        assert result.returncode == 0, (command, result.stderr)


def test_every_help_works_without_the_model_stack() -> None:
    # The parsers are light: `splitft --help` and every group's and command's `--help` print, and
    # the commands the control-plane image runs really run, where torch cannot be imported.
    code = (
        "import contextlib, io, sys\n"
        "from splitft.cli import main\n"
        "from splitft.cli.commands import control, pki\n"  # what the control image runs, loaded
        f"for command in {_every_command()!r}:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            main([*command, '--help'])\n"
        "        except SystemExit as exc:\n"
        "            assert exc.code == 0, (command, exc.code)\n"
        "    assert out.getvalue().startswith('usage: splitft'), command\n"
        "    print(' '.join(command) or '(top)')\n"
    )
    result = _run_without_model_stack(code)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    assert len(printed) == len(_every_command()) and "bench methods" in printed and "(top)" in printed


def test_control_plane_keys_run_without_the_model_stack(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from splitft.cli import main\n"
        f"sys.exit(main(['control', 'keys', 'create', '--name', 'ops', '--data-dir', r'{tmp_path}']))\n"
    )
    result = _run_without_model_stack(code)
    assert result.returncode == 0, result.stderr
    key_id, key = result.stdout.split()
    assert key_id and len(key) > 20


def test_the_edge_health_probe_runs_without_the_model_stack() -> None:
    # The container probe runs every few seconds: it must not pay for importing torch (nothing listens
    # on port 9, so the edge is reported not healthy: exit 1, not an ImportError).
    code = (
        "import sys\n"
        "from splitft.cli import main\n"
        "sys.exit(main(['edge', 'health', '--insecure', '--address', '127.0.0.1:9', '--timeout', '2']))\n"
    )
    result = _run_without_model_stack(code)
    assert result.returncode == 1, result.stderr
    assert "is not healthy" in result.stderr and "UNAVAILABLE" in result.stderr


def _every_command() -> list[list[str]]:
    """Every parser's path in the `splitft` tree, the top level first ([])."""

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> list[list[str]]:
        found = [path]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += walk(sub, [*path, name])
        return found

    return walk(build_parser(), [])


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


def test_control_plane_commands_do_not_load_the_model_stack_even_where_installed(tmp_path: Path) -> None:
    # The model stack is installed here; `tokens keygen` (like control and certs) must not import it.
    code = (
        "import sys\n"
        "from splitft.cli import main\n"
        f"code = main(['tokens', 'keygen', '--out', {str(tmp_path)!r}])\n"
        "print(code, sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "0 []"


def test_the_operator_commands_run_without_the_model_stack() -> None:
    # `splitft jobs|devices|edges` run in the control-plane image too: nothing answers on port 9, so
    # the command gets as far as its REST call and says so (exit 2), with no ImportError on the way.
    code = (
        "import os, sys\n"
        "from splitft.cli import main\n"
        "os.environ['SPLITFT_OPERATOR_KEY'] = 'k' * 20\n"
        "sys.exit(main(['edges', 'list', '--control-plane', 'http://127.0.0.1:9']))\n"
    )
    result = _run_without_model_stack(code)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: control plane unreachable (GET http://127.0.0.1:9/v1/edges)")


def test_the_dashboard_files_ship_as_package_data() -> None:
    # /ui serves files from the installed package (the control-plane image has no source tree).
    from fnmatch import fnmatch

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = patterns["splitft_control"]
    files = sorted(p.relative_to(ROOT / "services").as_posix() for p in (ROOT / "services" / "ui").iterdir())
    assert files == ["ui/app.css", "ui/app.js", "ui/chart.js", "ui/index.html"]
    assert all(any(fnmatch(name, pattern) for pattern in shipped) for name in files)
