"""`fedsim certs`: what each party gets, that keys stay private, and that a folder of keys is never silently mixed or
overwritten."""

from __future__ import annotations

import datetime as dt
import shutil
import ssl
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key, load_ssh_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedsim.cli import main
from fedsim.deploy.certs import (
    CertificateError,
    Credentials,
    add_nodes,
    make_certificates,
    revoke_node,
    revoked_serials,
)


def _certificate(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def _modes(folder):
    return {path.relative_to(folder).as_posix(): path.stat().st_mode & 0o777
            for path in folder.rglob("*") if path.is_file()}


def test_each_party_gets_its_files_and_private_keys_are_0600(tmp_path):
    credentials = make_certificates(tmp_path / "c", 2, ("superlink.example.org", "10.1.2.3"))
    modes = _modes(credentials.folder)
    private = {"ca.key", "server.key", "nodes/node-0/node.key", "nodes/node-0/client.key", "nodes/node-1/node.key",
               "nodes/node-1/client.key"}
    assert {name for name, mode in modes.items() if mode == 0o600} == private
    assert all(mode == 0o644 for name, mode in modes.items() if name not in private)
    node = credentials.nodes[1]
    assert sorted(p.name for p in node.folder.iterdir()) == ["ca.crt", "client.crt", "client.key", "node.key",
                                                             "node.pub"]
    assert node.ca_cert.read_bytes() == credentials.ca_cert.read_bytes()
    # the SuperNode-authentication pair is what Flower 1.41 reads (OpenSSH ECDSA P-384), and the two halves match
    key = load_ssh_private_key(node.auth_key.read_bytes(), None)
    public = load_ssh_public_key(node.auth_public_key.read_bytes())
    assert key.public_key().public_numbers() == public.public_numbers()
    assert node.auth_public_key.read_text().startswith("ecdsa-sha2-nistp384 ")


def test_server_certificate_names_the_hosts_and_client_certificates_are_for_clients_only(tmp_path):
    credentials = make_certificates(tmp_path, 1, ("superlink.example.org", "10.1.2.3"))
    server = _certificate(credentials.server_cert)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "superlink.example.org"} <= set(names.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.1.2.3"} <= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    server_usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(server_usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    client = _certificate(credentials.nodes[0].client_cert)
    client_usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(client_usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.rfc4514_string().startswith("CN=node-0")
    # the client key belongs to the client certificate, and the CA verifies it (as nginx will)
    client_key = load_pem_private_key(credentials.nodes[0].client_key.read_bytes(), None)
    assert client_key.public_key().public_numbers() == client.public_key().public_numbers()
    client.verify_directly_issued_by(_certificate(credentials.ca_cert))
    context = ssl.create_default_context(cafile=str(credentials.ca_cert))
    context.load_cert_chain(str(credentials.nodes[0].client_cert), str(credentials.nodes[0].client_key))


def test_an_existing_folder_is_refused_in_one_line_and_left_untouched(tmp_path, capsys):
    folder = tmp_path / "c"
    make_certificates(folder, 2)
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    with pytest.raises(SystemExit) as stop:
        main(["certs", str(folder), "--nodes", "3"])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "already holds a CA and 2 node folders" in line and "--add-nodes" in line and "--force" in line
    assert "\n" not in line
    assert before == {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_add_nodes_issues_from_the_same_ca_and_keeps_the_others(tmp_path):
    folder = tmp_path / "c"
    credentials = make_certificates(folder, 2)
    ca_before, node0_before = credentials.ca_cert.read_bytes(), credentials.nodes[0].auth_key.read_bytes()
    new = add_nodes(folder, 2)
    assert [node.name for node in new] == ["node-2", "node-3"]
    assert [node.name for node in Credentials(folder).nodes] == ["node-0", "node-1", "node-2", "node-3"]
    assert credentials.ca_cert.read_bytes() == ca_before and credentials.nodes[0].auth_key.read_bytes() == node0_before
    _certificate(new[1].client_cert).verify_directly_issued_by(_certificate(credentials.ca_cert))


def test_force_starts_over_with_a_new_ca(tmp_path):
    folder = tmp_path / "c"
    old = make_certificates(folder, 3).ca_cert.read_bytes()
    credentials = make_certificates(folder, 1, start_over=True)
    assert credentials.ca_cert.read_bytes() != old
    assert [node.name for node in credentials.nodes] == ["node-0"]  # no node of the old CA is left behind


def test_add_nodes_without_a_ca_says_how_to_make_one(tmp_path):
    with pytest.raises(CertificateError, match="has no ca.crt and ca.key"):
        add_nodes(tmp_path / "empty", 1)


def test_revoking_a_node_lists_its_serial_in_the_crl_and_only_its(tmp_path):
    credentials = make_certificates(tmp_path, 3)
    revoke_node(tmp_path, "node-1")
    revoke_node(tmp_path, "node-1")  # twice is once
    serial = _certificate(credentials.nodes[1].client_cert).serial_number
    assert set(revoked_serials(credentials)) == {serial}
    crl = x509.load_pem_x509_crl(credentials.crl.read_bytes())
    assert crl.is_signature_valid(_certificate(credentials.ca_cert).public_key())
    assert crl.next_update_utc == _certificate(credentials.ca_cert).not_valid_after_utc  # valid as long as the CA
    with pytest.raises(CertificateError, match="no node 'node-9'"):
        revoke_node(tmp_path, "node-9")


def test_expiry_is_printed_and_follows_days(tmp_path, capsys):
    main(["certs", str(tmp_path / "c"), "--nodes", "1", "--days", "30"])
    out = capsys.readouterr().err
    assert "node-0 client certificate" in out and "(29 days)" in out and "valid until" in out
    end = _certificate(tmp_path / "c" / "nodes" / "node-0" / "client.crt").not_valid_after_utc
    assert abs((end - dt.datetime.now(dt.timezone.utc)).days - 30) <= 1
    main(["certs", str(tmp_path / "c"), "--revoke", "node-0"])
    main(["certs", str(tmp_path / "c"), "--show"])
    assert "REVOKED" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--nodes", "-1"], ["--days", "0"], ["--add-nodes", "0"],
                                  ["--force", "--revoke", "node-0"]])
def test_bad_certs_arguments_are_one_line(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as stop:
        main(["certs", str(tmp_path / "c"), *args])
    assert stop.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.skipif(shutil.which("openssl") is None,
                    reason="the openssl command is not installed (.ci/run installs it)")
def test_openssl_agrees_with_the_chain(tmp_path):
    """The same check nginx makes (OpenSSL's verify with the CRL): node certificates verify, a revoked one does not."""
    credentials = make_certificates(tmp_path, 2)
    revoke_node(tmp_path, "node-1")
    def verify(node):
        return subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(credentials.ca_cert), "-CRLfile",
                               str(credentials.crl), "-purpose", "sslclient", str(node.client_cert)],
                              capture_output=True, text=True, check=False)
    assert verify(credentials.nodes[0]).returncode == 0
    revoked = verify(credentials.nodes[1])
    assert revoked.returncode != 0 and "revoked" in (revoked.stdout + revoked.stderr)
