"""Where the operator commands find the control plane, their key and the CA, and their REST calls.

Each setting comes from its flag, else the environment, else a config file. The operator key is a
bearer secret: it never comes from the command line (`ps` would show it to every user), and a file
that holds it (the config file, `--operator-key-file`) must be readable by its owner only.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from splitft.errors import InvalidArgument, NotFound
from splitft.rest import request, response_json
from splitft.security.trust import check_control_url, control_client, read_ca_file

URL_ENV = "SPLITFT_CONTROL_URL"
KEY_ENV = "SPLITFT_OPERATOR_KEY"
CA_ENV = "SPLITFT_CONTROL_CA"
CONFIG_ENV = "SPLITFT_OPERATOR_CONFIG"
DEFAULT_CONFIG = Path("~/.config/splitft/operator.yaml")
CONFIG_KEYS = frozenset({"url", "key", "ca", "insecure"})
MAX_CONFIG_BYTES = 64 * 1024


@dataclass(frozen=True)
class Connection:
    """A resolved control plane: its URL, the operator key and the CA that verifies it (None: the
    system's store)."""

    url: str
    key: str
    ca_pem: str | None


def read_private_text(path: Path, what: str) -> str:
    """A secret-bearing file's text; refused when group or others may read or write it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidArgument(f"{what} {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise InvalidArgument(
            f"refusing to read {what} {path}: its mode is {mode:04o}, so other users may read the operator "
            f"key in it; run `chmod 600 {path}`"
        )
    if info.st_size > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"{what} {path} is larger than {MAX_CONFIG_BYTES} bytes")
    return path.read_text(encoding="utf-8")


def load_config(path: Path) -> dict[str, Any]:
    """The operator config file: a YAML (or JSON) mapping of url, key, ca, insecure."""
    text = read_private_text(path, "operator config")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"operator config {path} is not valid YAML or JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidArgument(f"operator config {path} must be a mapping (url, key, ca, insecure)")
    unknown = sorted(str(k) for k in data if k not in CONFIG_KEYS)
    if unknown:
        raise InvalidArgument(
            f"operator config {path}: unknown setting(s) {', '.join(unknown)}; known: url, key, ca, insecure"
        )
    for name in ("url", "key", "ca"):
        if name in data and not isinstance(data[name], str):
            raise InvalidArgument(f"operator config {path}: {name} must be a string")
    if "insecure" in data and not isinstance(data["insecure"], bool):
        raise InvalidArgument(f"operator config {path}: insecure must be true or false")
    return data


def _config(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[dict[str, Any], Path | None]:
    """The config file's settings and its path; {} when none is named and the default is absent."""
    named = args.config or env.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        return load_config(path), path
    default = DEFAULT_CONFIG.expanduser()
    if default.exists():
        return load_config(default), default
    return {}, None


def resolve(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Connection:
    """The connection the command's flags, the environment and the config file describe, in that order."""
    env = os.environ if env is None else env
    config, config_path = _config(args, env)
    where = f" or put it in {config_path}" if config_path else f", or write {DEFAULT_CONFIG} (mode 0600)"
    url = args.control_plane or env.get(URL_ENV) or config.get("url")
    if not url:
        raise InvalidArgument(f"no control-plane URL: pass --control-plane URL, set {URL_ENV}{where}")
    url = check_control_url(url, insecure=bool(args.insecure or config.get("insecure", False)))
    if args.operator_key_file:
        key = read_private_text(Path(args.operator_key_file).expanduser(), "operator key file").strip()
    else:
        key = env.get(KEY_ENV) or config.get("key") or ""
    if not key:
        raise InvalidArgument(f"no operator key: pass --operator-key-file FILE, set {KEY_ENV}{where}")
    ca_path: str | Path | None = args.ca or env.get(CA_ENV)
    if ca_path is None and config.get("ca"):
        ca_path = Path(config["ca"]).expanduser()
        if config_path is not None and not ca_path.is_absolute():
            ca_path = config_path.parent / ca_path  # relative to the config file, not the cwd
    return Connection(url=url, key=key, ca_pem=read_ca_file(ca_path) if ca_path else None)


class OperatorClient:
    """The operator's REST calls; errors raise `splitft.errors` with the server's reason."""

    def __init__(self, connection: Connection, *, http: httpx.Client | None = None) -> None:
        self.url = connection.url
        self.http = http or control_client(connection.ca_pem)
        self.headers = {"Authorization": f"Bearer {connection.key}"}

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return request(self.http, method, self.url + path, headers=self.headers, **kwargs)

    def get(self, path: str, **params: Any) -> Any:
        return response_json(self.call("GET", path, params=params or None))

    def post(self, path: str, body: Any = None) -> Any:
        return response_json(self.call("POST", path, json=body))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
