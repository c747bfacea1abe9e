"""`fedsim certs`: the files a secure federation needs, made with the `cryptography` package.

- `ca.crt` (+ `ca.key`): a private certificate authority; SuperNodes and `flwr` trust the SuperLink through it
  (`--root-certificates`, `root-certificates` of a SuperLink connection);
- `server.crt`, `server.key`: the SuperLink's TLS identity, valid for localhost, 127.0.0.1 and the given hosts;
- `nodes/node-<i>` and `nodes/node-<i>.pub`: one ECDSA (P-384) key pair per SuperNode in OpenSSH format, which is
  what `flower-supernode --auth-supernode-private-key` and `flwr supernode register` read in Flower 1.41.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
VALID_DAYS = 365


@dataclass(frozen=True)
class CertificateFiles:
    """Where `make_certificates` wrote each file."""

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_private_keys: tuple[Path, ...]
    node_public_keys: tuple[Path, ...]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsim"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san_entry(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN otherwise (TLS checks IP literals only against IP SANs)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_certificates(folder: str | Path, num_nodes: int = 0, hosts: tuple[str, ...] = (), days: int = VALID_DAYS) -> CertificateFiles:
    """Write a CA, a SuperLink certificate for localhost, 127.0.0.1 and `hosts`, and `num_nodes` SuperNode key pairs."""
    folder = Path(folder)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("fedsim CA")).issuer_name(_name("fedsim CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder().subject_name(_name(names[-1] if hosts else "localhost")).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san_entry(host) for host in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = CertificateFiles(
        folder, folder / "ca.crt", folder / "ca.key", folder / "server.crt", folder / "server.key",
        tuple(folder / "nodes" / f"node-{i}" for i in range(num_nodes)),
        tuple(folder / "nodes" / f"node-{i}.pub" for i in range(num_nodes)),
    )
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(files.ca_key, _pem_key(ca_key), private=True)
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(files.server_key, _pem_key(server_key), private=True)
    for private_path, public_path in zip(files.node_private_keys, files.node_public_keys, strict=True):
        write_node_key_pair(private_path, public_path)
    return files


def write_node_key_pair(private_path: Path, public_path: Path) -> None:
    """One SuperNode's ECDSA P-384 key pair in OpenSSH format (what Flower 1.41 reads for node authentication)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(private_path, private, private=True)
    _write(public_path, public + f" {private_path.name}\n".encode(), private=False)
