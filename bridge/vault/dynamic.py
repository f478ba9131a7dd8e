"""Dynamic secrets engines and leases: database credentials, PKI certificates, SSH certificates, and
``sys/leases`` renew / revoke / lookup. Facts (OpenBao 2.7.2, docs/dynamic.md "Verified Vault facts"):

- ``GET {mount}/creds/<role>`` makes a database login now; the answer is a lease (``database/creds/<role>/<id>``,
  renewable). It takes no TTL: the role's ``default_ttl`` applies, and a renewal with a smaller ``increment``
  shortens the lease (verified).
- ``POST {mount}/issue/<role>`` / ``{mount}/sign/<role>``: a certificate; with the role's ``generate_lease`` the
  answer is a lease (not renewable) whose revocation revokes the certificate (CRL).
- ``POST {mount}/sign/<role>`` on an SSH mount: a signed certificate, never a lease.
- ``PUT sys/leases/renew/<lease_id>`` and ``PUT sys/leases/revoke/<lease_id>`` with the lease id **in the URL**
  and nothing else in the body (Vault lets a body ``lease_id`` override the URL's; agent policies refuse it);
  revoking twice is fine (204); renewing a lease that is gone is 400 ``lease not found``.
"""

from __future__ import annotations

from typing import Any

from bridge.vault.api import Requester, quote_path
from bridge.vault.models import Certificate, DatabaseCredential, Lease, LeaseLookup, SshCertificate


class DatabaseAPI:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def creds(self, mount: str, role: str, *, token: str) -> DatabaseCredential:
        resp = await self._requester.request("GET", f"{mount}/creds/{quote_path(role)}", operation="database.creds",
                                             token=token)
        return DatabaseCredential.parse(resp)


class PkiAPI:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def issue(self, mount: str, role: str, body: dict[str, Any], *, token: str) -> Certificate:
        """A key pair and its certificate (``common_name``, ``alt_names`` "a,b", ``ip_sans``, ``ttl``)."""
        resp = await self._requester.request("POST", f"{mount}/issue/{quote_path(role)}", operation="pki.issue",
                                             token=token, json_body=body, expensive=True)
        return Certificate.parse(resp)

    async def sign(self, mount: str, role: str, body: dict[str, Any], *, token: str) -> Certificate:
        """A certificate for a CSR (``csr``, and optionally ``common_name``, ``alt_names``, ``ttl``)."""
        resp = await self._requester.request("POST", f"{mount}/sign/{quote_path(role)}", operation="pki.sign",
                                             token=token, json_body=body)
        return Certificate.parse(resp)


class SshAPI:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def sign(self, mount: str, role: str, body: dict[str, Any], *, token: str) -> SshCertificate:
        """Sign a public key (``public_key``, ``valid_principals`` "a,b", ``ttl``)."""
        resp = await self._requester.request("POST", f"{mount}/sign/{quote_path(role)}", operation="ssh.sign",
                                             token=token, json_body=body)
        return SshCertificate.parse(resp)


class LeasesAPI:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def renew(self, lease_id: str, increment: int | None = None, *, token: str) -> Lease:
        """Renew by ``increment`` seconds from now (Vault caps it at the role's ``max_ttl``; a smaller one
        shortens the lease); without one, by the lease's own TTL. The granted lease."""
        body = {"increment": f"{increment}s"} if increment else {}
        resp = await self._requester.request("PUT", f"sys/leases/renew/{quote_path(lease_id)}",
                                             operation="leases.renew", token=token, json_body=body)
        return Lease(lease_id=resp.lease_id or lease_id, lease_duration=resp.lease_duration,
                     renewable=resp.renewable)

    async def revoke(self, lease_id: str, *, token: str) -> None:
        """Revoke now (synchronously); a lease already gone is no error."""
        await self._requester.request("PUT", f"sys/leases/revoke/{quote_path(lease_id)}", operation="leases.revoke",
                                      token=token, json_body={})

    async def lookup(self, lease_id: str, *, token: str) -> LeaseLookup:
        """An operator's view of a lease (needs ``update`` on ``sys/leases/lookup``: not the bridge's, not an
        agent's); a lease that is gone is 400 ``invalid lease``."""
        resp = await self._requester.request("PUT", "sys/leases/lookup", operation="leases.lookup", token=token,
                                             json_body={"lease_id": lease_id})
        return LeaseLookup.parse(resp.data)
