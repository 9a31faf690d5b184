"""`splitft certs init|device` and `splitft tokens keygen|issue`: mutual TLS and session tokens
(parsers only)."""

from __future__ import annotations

import argparse

from splitft.cli.args import handled_by


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `certs` and `tokens` groups to the top-level `commands`."""
    _register_certs(commands)
    _register_tokens(commands)


def _register_certs(commands: argparse._SubParsersAction) -> None:
    certs = commands.add_parser("certs", help="certificates for mutual TLS").add_subparsers(
        dest="certs_command", required=True
    )
    init = certs.add_parser("init", help="create the deployment CA and the edge's server certificate")
    init.add_argument("--dir", required=True)
    init.add_argument("--host", action="append", required=True, help="DNS name or IP of the edge; repeatable")
    init.add_argument(
        "--control-host",
        action="append",
        default=None,
        help="DNS name or IP of the control plane (control.pem); repeatable (default: the --host values)",
    )
    init.add_argument("--force", action="store_true", help="replace existing files")
    handled_by(init, "pki:certs_init")
    control = certs.add_parser(
        "control", help="issue the control plane's HTTPS certificate from an existing CA"
    )
    control.add_argument("--dir", required=True)
    control.add_argument("--host", action="append", required=True, help="DNS name or IP; repeatable")
    control.add_argument("--force", action="store_true")
    handled_by(control, "pki:certs_control")
    device = certs.add_parser("device", help="issue a device's client certificate (CN = NAME)")
    device.add_argument("--dir", required=True)
    device.add_argument("--name", required=True)
    device.add_argument("--force", action="store_true")
    handled_by(device, "pki:certs_device")


def _register_tokens(commands: argparse._SubParsersAction) -> None:
    tokens = commands.add_parser("tokens", help="session tokens").add_subparsers(
        dest="tokens_command", required=True
    )
    keygen = tokens.add_parser("keygen", help="create an Ed25519 token issuer key pair")
    keygen.add_argument("--out", required=True, help="writes OUT/issuer.key (0600) and OUT/issuer.pub")
    keygen.add_argument("--force", action="store_true")
    handled_by(keygen, "pki:tokens_keygen")
    issue = tokens.add_parser("issue", help="sign a session token")
    issue.add_argument("--key", required=True, help="the issuer's private key (PEM)")
    issue.add_argument("--session", required=True)
    issue.add_argument("--device", required=True, help="must equal the CN of the device's certificate")
    issue.add_argument("--model", required=True, help="the model name on the edge")
    issue.add_argument("--edge", default="", help="restrict to this edge id")
    issue.add_argument("--job", default="")
    issue.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires")
    handled_by(issue, "pki:tokens_issue")
