"""A local development CA and a certificate for 127.0.0.1/localhost, for endpoints that
terminate TLS (`deploy.tls` in shipyard.yaml) on a machine without a real certificate.

`shipyard stack cert` writes them once into `tls/` in the stack directory (files 600,
directory 700) and prints their paths; a client trusts the endpoint with the CA file
(`curl --cacert`, `httpx.get(..., verify=CA)`). The certificate is renewed when it has less
than 30 days left; the CA is kept. Keys are ECDSA P-256, made by `cryptography`.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shipyard.settings import Settings
from shipyard.stack import state as stack_state

NAMES = ("localhost",)
ADDRESSES = ("127.0.0.1", "::1")
CA_DAYS = 3650
CERT_DAYS = 397  # what browsers accept of a certificate's lifetime
RENEW_DAYS = 30


@dataclass(frozen=True)
class DevCerts:
    ca: Path
    """The CA certificate clients trust."""
    cert: Path
    """The endpoint's certificate (deploy.tls.cert)."""
    key: Path
    """Its private key (deploy.tls.key)."""
    ca_key: Path
    not_after: datetime.datetime


def tls_dir(settings: Settings) -> Path:
    return settings.stack_dir / "tls"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shipyard local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _new_ca(
    now: datetime.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("Shipyard development CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _new_leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, now: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _load_ca(
    cert_path: Path, key_path: Path
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    return key, cert


def ensure_dev_certs(
    settings: Settings, now: datetime.datetime | None = None
) -> tuple[DevCerts, list[str]]:
    """The development CA and the 127.0.0.1/localhost certificate, made when missing (the
    certificate also when it expires within 30 days); returns them and what was made."""
    now = now or datetime.datetime.now(datetime.UTC)
    directory = stack_state.make_private_dir(tls_dir(settings))
    ca_path, ca_key_path = directory / "ca.pem", directory / "ca-key.pem"
    cert_path, key_path = directory / "localhost.pem", directory / "localhost-key.pem"
    made: list[str] = []
    loaded = _load_ca(ca_path, ca_key_path)
    ca_made = False
    if loaded is None or loaded[1].not_valid_after_utc < now + datetime.timedelta(days=CERT_DAYS):
        loaded, ca_made = _new_ca(now), True
        stack_state.write_private(ca_key_path, _key_pem(loaded[0]))
        stack_state.write_private(ca_path, _cert_pem(loaded[1]))
        made.append(f"CA {ca_path}")
    ca_key, ca = loaded
    try:
        current: x509.Certificate | None = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        current = None
    if (
        current is None
        or not key_path.is_file()
        or current.issuer != ca.subject
        or current.not_valid_after_utc < now + datetime.timedelta(days=RENEW_DAYS)
        or ca_made
    ):
        key, current = _new_leaf(ca_key, ca, now)
        stack_state.write_private(key_path, _key_pem(key))
        stack_state.write_private(cert_path, _cert_pem(current))
        made.append(f"certificate {cert_path}")
    certs = DevCerts(ca_path, cert_path, key_path, ca_key_path, current.not_valid_after_utc)
    return certs, made
