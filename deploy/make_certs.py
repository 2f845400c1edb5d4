"""Generate what a secured federation needs: a CA, the SuperLink's TLS certificate, node keys.

    python -m deploy.make_certs --out runs/federation/certs --nodes 3 [--san HOST ...]

writes

    ca.crt            the root every SuperNode and `flwr` CLI trusts (copy it to them)
    ca.key            the CA's private key: keep it off the nodes, it signs server certs
    server.crt/.key   the SuperLink's certificate for localhost, 127.0.0.1, ::1 and every
                      --san name or IP (add the SuperLink machine's address for real
                      deployments: the nodes check it against the address they dial)
    node-<i>          SuperNode i's private key (OpenSSH, ECDSA P-384), only for node i
    node-<i>.pub      its public key, registered with `flwr supernode register`

Flower 1.42 reads node keys with ``load_ssh_private_key`` / ``load_ssh_public_key`` and
accepts NIST EC curves only (``flwr supernode register``), i.e. what
``ssh-keygen -t ecdsa -b 384`` produces; this script writes exactly that, without needing
openssl or ssh-keygen on the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 365


@dataclass(frozen=True)
class Certificates:
    """Paths of everything :func:`make_certificates` wrote."""

    folder: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[Path, ...]  # private keys; the public key of k is k.with_suffix(".pub")

    def node_public_key(self, index: int) -> Path:
        return self.node_keys[index].with_name(self.node_keys[index].name + ".pub")


def make_certificates(out: Path, num_nodes: int, extra_sans: Sequence[str] = ()) -> Certificates:
    """Write a CA, a SuperLink certificate and ``num_nodes`` node key pairs into ``out``."""
    if num_nodes < 0:
        raise ValueError(f"--nodes must be >= 0, got {num_nodes}")
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _ca_certificate(ca_key)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = _server_certificate(server_key, ca_key, ca_cert, [*LOOPBACK_NAMES, *extra_sans])
    _write(out / "ca.key", _pem_private(ca_key), private=True)
    _write(out / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "server.key", _pem_private(server_key), private=True)
    _write(out / "server.crt", server_cert.public_bytes(serialization.Encoding.PEM))
    node_keys = tuple(write_node_key(out / f"node-{i}") for i in range(num_nodes))
    return Certificates(out, out / "ca.crt", out / "server.crt", out / "server.key", node_keys)


def load_or_make_certificates(out: Path, num_nodes: int) -> Certificates:
    """Reuse the CA and server certificate in ``out`` if present; add missing node keys."""
    if not all((out / name).is_file() for name in ("ca.crt", "server.crt", "server.key")):
        return make_certificates(out, num_nodes)
    node_keys = tuple(
        key if (key := out / f"node-{i}").is_file() else write_node_key(key)
        for i in range(num_nodes)
    )
    return Certificates(out, out / "ca.crt", out / "server.crt", out / "server.key", node_keys)


def write_node_key(path: Path) -> Path:
    """One SuperNode key pair: ``path`` (private, OpenSSH) and ``path.pub`` (public)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(path, private, private=True)
    _write(path.with_name(path.name + ".pub"), public + f" {path.name}\n".encode())
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    # Back-date a little so a node whose clock is slightly behind still accepts it.
    return builder.not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(
        now + dt.timedelta(days=VALID_DAYS)
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("fedmeta federation CA"))
        .issuer_name(_name("fedmeta federation CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _validity(builder).sign(key, hashes.SHA384())


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: Sequence[str],
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("fedmeta SuperLink"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(_general_names(sans)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    return _validity(builder).sign(ca_key, hashes.SHA384())


def _general_names(sans: Sequence[str]) -> list[x509.GeneralName]:
    """IP addresses as IP SANs (TLS clients match IPs only against those), the rest as DNS."""
    names: list[x509.GeneralName] = []
    for san in dict.fromkeys(sans):  # keep order, drop duplicates
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    return names


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write atomically; private keys are created readable by their owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.make_certs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/federation/certs"))
    parser.add_argument("--nodes", type=int, default=3, help="SuperNode key pairs to create")
    parser.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="HOST",
        help="extra DNS name or IP of the SuperLink machine (repeatable)",
    )
    args = parser.parse_args(argv)
    certs = make_certificates(args.out, args.nodes, args.san)
    print(f"CA certificate     {certs.ca_cert}")
    print(f"SuperLink cert/key {certs.server_cert} {certs.server_key}")
    print(f"  valid for        {', '.join(dict.fromkeys([*LOOPBACK_NAMES, *args.san]))}")
    for i, key in enumerate(certs.node_keys):
        print(f"SuperNode {i} key   {key} (public: {certs.node_public_key(i)})")


if __name__ == "__main__":
    main()
