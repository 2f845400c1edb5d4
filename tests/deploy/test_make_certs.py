"""Certificates and node keys in exactly the formats Flower 1.42 and TLS clients accept."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from deploy.make_certs import load_or_make_certificates, make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    return make_certificates(folder, 2, extra_sans=["10.1.2.3", "link.lan"])


def test_server_certificate_is_signed_by_the_ca_for_loopback_and_extra_names(certs):
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "link.lan"}
    ips = set(san.get_values_for_type(x509.IPAddress))
    assert ips == {ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3")}


def _handshake(certs, trusted_ca: Path, server_name: str) -> None:
    """A TLS handshake on loopback: our server cert, a client trusting ``trusted_ca``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.server_cert, certs.server_key)
    client_ctx = ssl.create_default_context(cafile=str(trusted_ca))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client rejected us: its side raises

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_name),
        ):
            pass
        thread.join(timeout=10)


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_a_client_trusting_the_ca_accepts_the_superlink(certs, name):
    _handshake(certs, certs.ca_cert, name)


def test_a_client_trusting_another_ca_rejects_the_superlink(certs, tmp_path):
    other = make_certificates(tmp_path / "other", 0)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certs, other.ca_cert, "127.0.0.1")


def test_a_name_not_in_the_certificate_is_rejected(certs):
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certs, certs.ca_cert, "not-the-superlink.example")


def test_node_keys_are_the_nist_ec_openssh_pairs_flower_loads(certs):
    for i, key_path in enumerate(certs.node_keys):
        private = load_ssh_private_key(key_path.read_bytes(), None)  # as flower-supernode does
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        registered = try_load_public_key(certs.node_public_key(i))  # as `flwr supernode register`
        assert registered == public_key_to_bytes(private.public_key())
    a, b = (k.read_bytes() for k in certs.node_keys)
    assert a != b


def test_private_keys_are_readable_by_their_owner_only(certs):
    for path in (certs.server_key, certs.folder / "ca.key", *certs.node_keys):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_existing_ca_is_reused_and_only_missing_node_keys_are_added(tmp_path):
    first = make_certificates(tmp_path, 1)
    ca, node0 = first.ca_cert.read_bytes(), first.node_keys[0].read_bytes()
    second = load_or_make_certificates(tmp_path, 3)
    assert second.ca_cert.read_bytes() == ca and second.node_keys[0].read_bytes() == node0
    assert [k.name for k in second.node_keys] == ["node-0", "node-1", "node-2"]
    assert all(second.node_public_key(i).is_file() for i in range(3))
