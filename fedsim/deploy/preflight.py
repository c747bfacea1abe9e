"""`fedsim deploy node <flower-supernode options>`: check the SuperLink is reachable the way the node will talk to
it, then become `flower-supernode` with the same options.

Without this, a wrong address or a TLS mismatch makes a SuperNode retry forever with "Connection attempt failed";
here each gives one line naming the cause, on the node, before Flower starts.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from .local_federation import DeployError

SUPERNODE_CODE = ("import sys; from flwr.supernode.cli import flower_supernode as main; "
                  "sys.argv[0] = 'flower-supernode'; sys.exit(main())")


def _value(args: Sequence[str], name: str) -> str | None:
    for position, arg in enumerate(args):
        if arg == name and position + 1 < len(args):
            return args[position + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DeployError(f"--superlink {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def check_superlink(address: str, root_certificates: str | Path | None, insecure: bool, timeout: float = 5.0) -> None:
    """Raise a one-line DeployError when a SuperNode with these options could not talk to the SuperLink."""
    host, port = _split_address(address)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        raise DeployError(f"cannot resolve the SuperLink host {host!r} (--superlink {address})") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DeployError(f"cannot reach the SuperLink at {address} ({reason}): check --superlink, that flower-superlink "
                          f"runs there with --port {port}, and the firewall") from None
    with raw:
        probe = ssl.create_default_context()
        probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE  # first: does it speak TLS at all?
        try:
            with probe.wrap_socket(raw, server_hostname=host):
                speaks_tls = True
        except (ssl.SSLError, OSError):
            speaks_tls = False
    if insecure and speaks_tls:
        raise DeployError(f"the SuperLink at {address} uses TLS but this node has --insecure: "
                          "pass --root-certificates ca.crt (from `fedsim certs`) instead")
    if insecure:
        return
    if not speaks_tls:
        raise DeployError(f"the SuperLink at {address} does not speak TLS (started with --insecure?): start it with "
                          "--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile, or this node with --insecure")
    if root_certificates is None:
        return  # Flower then uses the system's CAs; their verdict comes from Flower itself
    if not Path(root_certificates).is_file():
        raise DeployError(f"--root-certificates {root_certificates} does not exist on this node")
    verify = ssl.create_default_context(cafile=str(root_certificates))
    try:
        with socket.create_connection((host, port), timeout=timeout) as again, verify.wrap_socket(again, server_hostname=host):
            pass
    except ssl.SSLCertVerificationError as error:
        reason = error.verify_message or str(error)
        raise DeployError(f"the SuperLink's certificate does not verify against {root_certificates} for {host!r} ({reason}): "
                          f"use the ca.crt that signed it, and make its certificate with `fedsim certs --host {host}`") from None


def supernode_main(args: Sequence[str]) -> None:
    """Check, then replace this process with `flower-supernode args` on this interpreter."""
    address = _value(args, "--superlink")
    if address is None:
        raise DeployError("flower-supernode needs --superlink HOST:PORT")
    check_superlink(address, _value(args, "--root-certificates"), "--insecure" in args)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-c", SUPERNODE_CODE, *args])
