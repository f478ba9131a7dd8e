"""A tiny test PKI with ``cryptography``: a CA, server and client certificates (CN and/or SPIFFE URI SAN),
certificates with crafted subjects, and the headers a TLS-terminating proxy forwards for them."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: Path
    key_path: Path


def _name(cn: str | None, org: str = "vault-mcp-bridge tests") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    if cn is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _write(directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> Issued:
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Issued(key, cert, cert_path, key_path)


def make_ca(directory: Path, name: str = "test-ca") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return _write(directory, name, key, cert)


def issue(directory: Path, ca: Issued, stem: str, *, cn: str | None = None, uris: tuple[str, ...] = (),
          server: bool = False, expired: bool = False,
          subject: list[tuple[x509.ObjectIdentifier, str]] | None = None) -> Issued:
    """A certificate signed by ``ca``; ``subject`` (attribute, value) pairs, in order, replace the usual
    ``O=…, CN=cn`` subject (crafted subjects: two CNs, no CN, an OU holding ``/CN=…``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    not_after = now - dt.timedelta(minutes=1) if expired else now + dt.timedelta(days=1)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    if server:
        sans += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    name = _name(cn) if subject is None else x509.Name([x509.NameAttribute(oid, value) for oid, value in subject])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return _write(directory, stem, key, cert)


def client_context(ca: Issued, client: Issued | None) -> ssl.SSLContext:
    """A client context trusting ``ca`` for the server, presenting ``client`` (if any)."""
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    if client is not None:
        ctx.load_cert_chain(str(client.cert_path), str(client.key_path))
    return ctx


# --- certificates as a TLS-terminating proxy forwards them (bridge/auth/mtls.py) ---

PROXY_SECRET = "test-proxy-secret-" + "p" * 24
"""``MTLS_PROXY_SECRET`` of the header-identity tests; the proxy (nginx, or the test itself) sends it."""


def escaped_pem(issued: Issued) -> str:
    """The certificate as nginx's ``$ssl_client_escaped_cert``: URL-encoded PEM."""
    return quote(issued.cert.public_bytes(serialization.Encoding.PEM).decode(), safe="")


def base64_der(issued: Issued) -> str:
    return base64.b64encode(issued.cert.public_bytes(serialization.Encoding.DER)).decode()


_SHORT = {NameOID.COMMON_NAME: "CN", NameOID.ORGANIZATION_NAME: "O", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU"}


def legacy_dn(issued: Issued) -> str:
    """The subject as OpenSSL's one-line form (``/O=x/CN=y``, nginx's ``$ssl_client_s_dn_legacy``, HAProxy's
    ``ssl_c_s_dn``): what proxies used to send in ``X-SSL-Client-S-DN``, values unescaped."""
    return "".join(f"/{_SHORT[a.oid]}={a.value!s}" for a in issued.cert.subject)


def relayed(issued: Issued | None, *, secret: str = PROXY_SECRET, form: str = "escaped-pem") -> dict[str, str]:
    """The headers the configured proxy adds for a verified client certificate."""
    headers = {"X-Proxy-Secret": secret}
    if issued is not None:
        value = {"escaped-pem": escaped_pem, "base64-der": base64_der}[form](issued)
        headers.update({"X-SSL-Client-Verify": "SUCCESS", "X-SSL-Client-Cert": value})
    return headers


@dataclass(frozen=True)
class Crafted:
    """A certificate subject crafted to confuse a hand-written DN parser, and the one right answer."""

    subject: list[tuple[x509.ObjectIdentifier, str]]
    status: int
    agent: str | None = None
    uris: tuple[str, ...] = ()


_O = (NameOID.ORGANIZATION_NAME, "vault-mcp-bridge tests")
CRAFTED: dict[str, Crafted] = {
    # the legacy "/" form splits this OU into a second, earlier CN
    "ou-holding-a-cn": Crafted([_O, (NameOID.ORGANIZATIONAL_UNIT_NAME, "a/CN=agent_api"),
                                (NameOID.COMMON_NAME, "bob")], 200, "bob"),
    # RFC 2253 escapes the backslash; a hand-split DN then glues the next RDN (and its CN) onto this one
    "value-ending-in-a-backslash": Crafted([_O, (NameOID.COMMON_NAME, "bob"),
                                            (NameOID.ORGANIZATIONAL_UNIT_NAME, "x\\")], 200, "bob"),
    "cn-ending-in-a-backslash": Crafted([_O, (NameOID.COMMON_NAME, "agent_api\\")], 403),
    "two-cns": Crafted([_O, (NameOID.COMMON_NAME, "bob"), (NameOID.COMMON_NAME, "agent_api")], 401),
    "two-cns-one-hidden-by-a-backslash": Crafted([_O, (NameOID.COMMON_NAME, "bob"),
                                                  (NameOID.ORGANIZATIONAL_UNIT_NAME, "x\\"),
                                                  (NameOID.COMMON_NAME, "agent_api")], 401),
    "no-cn": Crafted([_O, (NameOID.ORGANIZATIONAL_UNIT_NAME, "agent_api")], 401),
    "plain": Crafted([_O, (NameOID.COMMON_NAME, "agent_mtls")], 200, "agent_mtls"),
}

SPIFFE_DOMAIN = "example.org"
CRAFTED_SPIFFE: dict[str, Crafted] = {
    "spiffe-in-domain": Crafted([_O, (NameOID.COMMON_NAME, "agent_api")], 200, "bob",
                                uris=("spiffe://example.org/ns/prod/sa/bob",)),
    "spiffe-other-domain": Crafted([_O, (NameOID.COMMON_NAME, "bob")], 401,
                                   uris=("spiffe://evil.example/ns/prod/sa/bob",)),
    "spiffe-look-alike-domain": Crafted([_O], 401, uris=("spiffe://example.org.evil.example/sa/bob",)),
    "two-spiffe-ids": Crafted([_O], 401, uris=("spiffe://example.org/sa/bob", "spiffe://example.org/sa/alice")),
    "no-spiffe-id": Crafted([_O, (NameOID.COMMON_NAME, "bob")], 401),
}


def issue_crafted(directory: Path, ca: Issued, cases: dict[str, Crafted]) -> dict[str, Issued]:
    return {name: issue(directory, ca, name, subject=case.subject, uris=case.uris) for name, case in cases.items()}
