"""`fedsim certs`: the keys and certificates of a hardened federation, made with the `cryptography` package.

What each party holds (README, "Who can do what"):
- the operator, on the server machine: `ca.key` (signs everything; keep it offline when not issuing), `ca.crt`,
  `server.crt` + `server.key` (the TLS identity of the SuperLink and of the proxy in front of it) and `crl.pem` (the
  nodes whose client certificates are revoked; the proxy reads it);
- client machine i: the folder `nodes/node-<i>/` and nothing else: `ca.crt` (to trust the server), `client.crt` +
  `client.key` (the TLS client certificate the proxy requires before it passes a byte on), and `node.key` +
  `node.pub` (the OpenSSH ECDSA P-384 key pair of Flower's SuperNode authentication; the operator registers
  `node.pub` with `flwr supernode register node.pub <connection> --name node-<i>`).

A folder that already holds keys is never overwritten silently: `add_nodes` issues more nodes from its CA, and
`start_over=True` removes the old material first.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import DeployError

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
VALID_DAYS = 365
NODES_FOLDER = "nodes"
NODE_NAME = re.compile(r"node-(\d+)")


class CertificateError(DeployError):
    """A `fedsim certs` request that would lose or mix key material, or names something that is not there."""


@dataclass(frozen=True)
class NodeCredentials:
    """One client machine's folder, `nodes/node-<i>/`: copy it whole to that machine."""

    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def index(self) -> int:
        return int(self.name.split("-", 1)[1])

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def client_cert(self) -> Path:
        return self.folder / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.folder / "client.key"

    @property
    def auth_key(self) -> Path:
        """Flower's `--auth-supernode-private-key`."""
        return self.folder / "node.key"

    @property
    def auth_public_key(self) -> Path:
        """What the operator registers with `flwr supernode register`."""
        return self.folder / "node.pub"


@dataclass(frozen=True)
class Credentials:
    """A federation's folder as `fedsim certs` writes it."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def crl(self) -> Path:
        return self.folder / "crl.pem"

    @property
    def nodes(self) -> tuple[NodeCredentials, ...]:
        """Every node folder, in index order."""
        root = self.folder / NODES_FOLDER
        if not root.is_dir():
            return ()
        found = [NodeCredentials(path) for path in root.iterdir() if path.is_dir() and NODE_NAME.fullmatch(path.name)]
        return tuple(sorted(found, key=lambda node: node.index))

    def node(self, name: str) -> NodeCredentials:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(node.name for node in self.nodes) or "none"
        raise CertificateError(f"{self.folder} has no node {name!r} (nodes: {known})")

    def holds_keys(self) -> bool:
        return any(path.exists() for path in (self.ca_key, self.ca_cert, self.server_key, self.folder / NODES_FOLDER))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsim"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san_entry(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN otherwise (TLS checks IP literals only against IP SANs)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write a file; a private one is created 0600 from the start, never readable by others even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.timezone.utc)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def _signed(builder: x509.CertificateBuilder, ca_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return builder.sign(ca_key, hashes.SHA256())


def _usage(signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=signing, crl_sign=signing, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=not signing,
                         encipher_only=False, decipher_only=False)


def _leaf(subject: str, public_key: ec.EllipticCurvePublicKey, ca_cert: x509.Certificate,
          ca_key: ec.EllipticCurvePrivateKey, days: int, usage: x509.ObjectIdentifier,
          names: list[str] | None = None) -> x509.Certificate:
    start, end = _validity(days)
    end = min(end, ca_cert.not_valid_after_utc)  # nothing outlives the CA that signed it
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(ca_cert.subject).public_key(public_key)
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(signing=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san_entry(host) for host in names]),
                                        critical=False)
    return _signed(builder, ca_key)


def _load_ca(credentials: Credentials) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not credentials.ca_key.exists() or not credentials.ca_cert.exists():
        raise CertificateError(f"{credentials.folder} has no ca.crt and ca.key to issue from: make a federation with "
                               f"`fedsim certs {credentials.folder} --nodes N` first")
    ca_cert = x509.load_pem_x509_certificate(credentials.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(credentials.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    return ca_cert, ca_key


def _write_crl(credentials: Credentials, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
               revoked: list[x509.RevokedCertificate]) -> None:
    """The revocation list the proxy checks client certificates against; it stays valid as long as the CA, since
    an expired list would make the proxy refuse every node."""
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - dt.timedelta(minutes=5)).next_update(ca_cert.not_valid_after_utc))
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    _write(credentials.crl, _signed_crl(builder, ca_key).public_bytes(serialization.Encoding.PEM), private=False)


def _signed_crl(builder: x509.CertificateRevocationListBuilder,
                ca_key: ec.EllipticCurvePrivateKey) -> x509.CertificateRevocationList:
    return builder.sign(ca_key, hashes.SHA256())


def _write_node(credentials: Credentials, index: int, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                days: int) -> NodeCredentials:
    node = NodeCredentials(credentials.folder / NODES_FOLDER / f"node-{index}")
    node.folder.mkdir(parents=True, exist_ok=False)
    auth = ec.generate_private_key(ec.SECP384R1())  # Flower 1.41 reads node keys in OpenSSH format
    _write(node.auth_key, auth.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()), private=True)
    public = auth.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(node.auth_public_key, public + f" {node.name}\n".encode(), private=False)
    tls = ec.generate_private_key(ec.SECP384R1())
    _write(node.client_key, _pem_key(tls), private=True)
    certificate = _leaf(node.name, tls.public_key(), ca_cert, ca_key, days, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(node.client_cert, certificate.public_bytes(serialization.Encoding.PEM), private=False)
    shutil.copyfile(credentials.ca_cert, node.ca_cert)
    return node


def make_certificates(folder: str | Path, num_nodes: int = 0, hosts: tuple[str, ...] = (), days: int = VALID_DAYS,
                      start_over: bool = False) -> Credentials:
    """A new CA, the server's certificate for localhost, 127.0.0.1 and `hosts`, an empty revocation list and
    `num_nodes` node folders. A folder that already holds keys is refused unless `start_over`, which removes them."""
    credentials = Credentials(Path(folder))
    if credentials.holds_keys():
        if not start_over:
            nodes = len(credentials.nodes)
            raise CertificateError(
                f"{credentials.folder} already holds a CA and {nodes} node folder{'s' * (nodes != 1)}: "
                "pass --add-nodes N to issue more nodes from that CA, or --force to start over "
                "(every machine then needs the new files)")
        for path in (credentials.ca_cert, credentials.ca_key, credentials.server_cert, credentials.server_key,
                     credentials.crl):
            path.unlink(missing_ok=True)
        shutil.rmtree(credentials.folder / NODES_FOLDER, ignore_errors=True)
    start, end = _validity(days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _signed(
        x509.CertificateBuilder().subject_name(_name("fedsim CA")).issuer_name(_name("fedsim CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(signing=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False),
        ca_key,
    )
    _write(credentials.ca_key, _pem_key(ca_key), private=True)
    _write(credentials.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = _leaf(names[-1] if hosts else "localhost", server_key.public_key(), ca_cert, ca_key, days,
                        ExtendedKeyUsageOID.SERVER_AUTH, names)
    _write(credentials.server_key, _pem_key(server_key), private=True)
    _write(credentials.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write_crl(credentials, ca_cert, ca_key, [])
    for index in range(num_nodes):
        _write_node(credentials, index, ca_cert, ca_key, days)
    return credentials


def add_nodes(folder: str | Path, count: int, days: int = VALID_DAYS) -> tuple[NodeCredentials, ...]:
    """`count` more node folders from the folder's CA, numbered after the highest node there."""
    credentials = Credentials(Path(folder))
    ca_cert, ca_key = _load_ca(credentials)
    first = max((node.index for node in credentials.nodes), default=-1) + 1
    return tuple(_write_node(credentials, index, ca_cert, ca_key, days) for index in range(first, first + count))


def revoke_node(folder: str | Path, name: str) -> NodeCredentials:
    """Add node `name`'s client certificate to `crl.pem`; the proxy refuses it once it reloads the list."""
    credentials = Credentials(Path(folder))
    node = credentials.node(name)
    ca_cert, ca_key = _load_ca(credentials)
    serial = x509.load_pem_x509_certificate(node.client_cert.read_bytes()).serial_number
    revoked = list(revoked_serials(credentials).items())
    if serial not in dict(revoked):
        revoked.append((serial, dt.datetime.now(dt.timezone.utc)))
    entries = [x509.RevokedCertificateBuilder().serial_number(number).revocation_date(when).build()
               for number, when in revoked]
    _write_crl(credentials, ca_cert, ca_key, entries)
    return node


def revoked_serials(credentials: Credentials) -> dict[int, dt.datetime]:
    """Serial number -> revocation time of every certificate in the folder's `crl.pem`."""
    if not credentials.crl.exists():
        return {}
    crl = x509.load_pem_x509_crl(credentials.crl.read_bytes())
    return {entry.serial_number: entry.revocation_date_utc for entry in crl}


def expiry_lines(credentials: Credentials, nodes: tuple[NodeCredentials, ...] | None = None) -> list[str]:
    """One line per certificate: what it is, until when it is valid, and whether it was revoked."""
    now = dt.datetime.now(dt.timezone.utc)
    revoked = revoked_serials(credentials)

    def line(label: str, path: Path) -> str:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        end = certificate.not_valid_after_utc
        state = " REVOKED" if certificate.serial_number in revoked else ""
        return f"{label}: {path} valid until {end:%Y-%m-%d %H:%M} UTC ({(end - now).days} days){state}"

    lines = [line("CA", credentials.ca_cert), line("SuperLink and proxy", credentials.server_cert)]
    lines += [line(f"{node.name} client certificate", node.client_cert)
              for node in (credentials.nodes if nodes is None else nodes)]
    return lines
