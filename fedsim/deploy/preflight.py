"""`fedsim deploy node`'s first step: check that the server answers the way the node will talk to it.

Without this, a wrong address, a TLS mismatch or a refused client certificate makes a SuperNode retry forever with
"Connection attempt failed"; here each gives one line naming the cause and what to do, on the node, before Flower
starts. `fedsim deploy node --check` runs only this: a client machine's health check.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from pathlib import Path

from ..errors import DeployError

# A Fleet-shaped path: the proxy passes it on, the SuperLink has no such method.
PROBE_PATH = "/v1/fleet/fedsim-preflight"


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DeployError(f"--superlink {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def check_superlink(address: str, root_certificates: str | Path | None, insecure: bool, timeout: float = 5.0,  # pylint: disable=too-many-arguments
                    client_cert: str | Path | None = None, client_key: str | Path | None = None) -> None:
    """Raise a one-line DeployError when a SuperNode with these options could not talk to the SuperLink."""
    host, port = _split_address(address)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        raise DeployError(f"cannot resolve the SuperLink host {host!r} (--superlink {address})") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DeployError(f"cannot reach the SuperLink at {address} ({reason}): check --superlink, "
                          f"that `fedsim deploy server` listens there on port {port}, and the firewall") from None
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
                          "pass --credentials <this node's folder from fedsim certs> instead")
    if insecure:
        return
    if not speaks_tls:
        raise DeployError(f"the SuperLink at {address} does not speak TLS (started with --insecure?): "
                          "start the server with `fedsim deploy server --certs DIR`, or this node with --insecure")
    if root_certificates is None:
        return  # Flower then uses the system's CAs; their verdict comes from Flower itself
    if not Path(root_certificates).is_file():
        raise DeployError(f"--root-certificates {root_certificates} does not exist on this node")
    verify = ssl.create_default_context(cafile=str(root_certificates))
    if client_cert is not None and client_key is not None:
        verify.load_cert_chain(str(client_cert), str(client_key))
    try:
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=verify)
        connection.request("POST", PROBE_PATH, body=b"", headers={"content-type": "application/protobuf"})
        response = connection.getresponse()
        status, body = response.status, response.read(2048).decode(errors="replace")
        connection.close()
    except ssl.SSLCertVerificationError as error:
        reason = error.verify_message or str(error)
        raise DeployError(f"the SuperLink's certificate does not verify against {root_certificates} for {host!r} "
                          f"({reason}): use the ca.crt that signed it, and make its certificate with "
                          f"`fedsim certs --host {host}`") from None
    except (ssl.SSLError, OSError) as error:
        raise DeployError(f"the server at {address} broke off the TLS connection ({error}): its proxy may have refused "
                          "this node's client certificate") from None
    _check_proxy_answer(address, status, body)


def _check_proxy_answer(address: str, status: int, body: str) -> None:
    """What the proxy's own answers mean; any other answer came from the SuperLink itself, which is what we want."""
    if status == 400 and "No required SSL certificate" in body:
        raise DeployError(f"the server at {address} requires this node's client certificate: start the node with "
                          "--credentials <its nodes/node-<i> folder from fedsim certs>")
    if status == 400 and "SSL certificate error" in body:
        raise DeployError(f"the server at {address} refused this node's client certificate: it was revoked, or issued "
                          "by another CA; ask the operator for this node's current folder (fedsim certs --add-nodes)")
    if status in (502, 503, 504):
        raise DeployError(f"the proxy at {address} answers but the SuperLink behind it does not (HTTP {status}): "
                          "start the SuperLink on the server (fedsim deploy server)")
    if status == 403:
        raise DeployError(f"the server at {address} refuses the Fleet API (HTTP 403): is --superlink the proxy's "
                          "address and port?")
