"""`splitft certs init|device` and `splitft tokens keygen|issue`: mutual TLS and session tokens."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from splitft.security.certs import init_ca, issue_control, issue_device, write_secret_files
from splitft.security.tokens import (
    generate_issuer_key,
    issue_token,
    load_private_key,
    private_key_pem,
    public_key_pem,
)
from splitft.security.trust import ca_fingerprint


def certs_init(args: argparse.Namespace) -> int:
    """Create the deployment CA, the edge's server certificate and the control plane's HTTPS one."""
    control_hosts = args.control_host or args.host
    paths = init_ca(args.dir, args.host, control_hosts=control_hosts, force=args.force)
    sys.stdout.write(
        f"CA: {paths.ca_cert} (SHA-256 {ca_fingerprint(paths.ca_cert.read_bytes())})\n"
        f"edge certificate: {paths.edge_cert} (hosts: {', '.join(args.host)})\n"
        f"control-plane certificate: {paths.control_cert} (hosts: {', '.join(control_hosts)})\n"
    )
    return 0


def certs_control(args: argparse.Namespace) -> int:
    """Issue the control plane's HTTPS certificate from an existing CA."""
    paths = issue_control(args.dir, args.host, force=args.force)
    sys.stdout.write(f"control-plane certificate: {paths.control_cert} (hosts: {', '.join(args.host)})\n")
    return 0


def certs_device(args: argparse.Namespace) -> int:
    """Issue a device's client certificate."""
    cert, key = issue_device(args.dir, args.name, force=args.force)
    sys.stdout.write(f"device certificate: {cert}\ndevice key: {key}\n")
    return 0


def tokens_keygen(args: argparse.Namespace) -> int:
    """Create an Ed25519 token issuer key pair (the private key 0600)."""
    key = generate_issuer_key()
    out = Path(args.out)
    write_secret_files(
        {out / "issuer.key": private_key_pem(key)},
        {out / "issuer.pub": public_key_pem(key)},
        force=args.force,
    )
    sys.stdout.write(f"issuer private key: {out / 'issuer.key'}\nissuer public key: {out / 'issuer.pub'}\n")
    return 0


def tokens_issue(args: argparse.Namespace) -> int:
    """Sign a session token and print it."""
    token = issue_token(
        load_private_key(args.key),
        session=args.session,
        device=args.device,
        model=args.model,
        edge=args.edge,
        job=args.job,
        ttl_seconds=args.ttl,
    )
    sys.stdout.write(token + "\n")
    return 0
