"""Where a secret may be brokered to: ``bridge.allowed_hosts`` entries, destinations, and address classes.

``bridge.allowed_hosts`` (a secret's KV custom metadata, set by an operator, e.g. with ``vault-mcp-bridge
secret-policy``) is a comma-separated list of ``host[:port]`` entries:

- ``api.example.com`` matches that host name exactly (case-insensitive, a trailing dot ignored);
- ``*.example.com`` matches every name below ``example.com`` at any depth (``a.example.com``, ``a.b.example.com``),
  never ``example.com`` itself, and never an IP address;
- ``10.0.0.5`` or ``[fd00::5]`` matches that IP literal in the URL only (never a name that resolves to it);
- without ``:port`` an entry matches the scheme's default port only (443 for https, 80 for http); any other port
  must be written (``api.example.com:8443``).

An absent or empty value means the secret cannot be brokered; so does a value with a malformed entry (the
operator must fix it; the bridge fails closed rather than guessing).

Every destination address, from an IP literal in the URL or from DNS, falls in one of three classes:

- **refused** (never connected to, whatever is listed): link-local (``169.254.0.0/16``, ``fe80::/10``), cloud
  metadata services (``169.254.169.254``, ``fd00:ec2::254``, ``fd20:ce::254``, ``100.100.100.200``,
  ``168.63.129.16``, ``192.0.0.192``) and names (``metadata.google.internal``, ``metadata.goog``, ``metadata``,
  ``instance-data``, ``instance-data.ec2.internal``, ``metadata.tencentyun.com``, ``metadata.platformequinix.com``),
  and what is no unicast destination (``0.0.0.0/8``, ``::``, multicast, broadcast, ``240.0.0.0/4``). IPv6 forms
  that embed an IPv4 address (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4, Teredo) are judged by that
  address too;
- **internal** (loopback ``127.0.0.0/8``/``::1``, private ``10/8``, ``172.16/12``, ``192.168/16``, ``fc00::/7``,
  shared ``100.64/10``, and every other address Python's ``ipaddress`` does not call global): allowed only when
  **listed explicitly** for every secret used, which means the matching entry names that IP literal or that exact
  host name (``db.internal``, ``localhost:8080``); an address reached through a ``*.`` entry never is. An exact
  name trusts its DNS: list only names whose DNS you control;
- **public**: everything else, allowed through any matching entry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_ALLOWED_HOSTS_BYTES = 512  # a KV custom-metadata value holds at most 512 bytes
DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\Z")

METADATA_HOSTS = frozenset({
    "metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal",
    "metadata.tencentyun.com", "metadata.platformequinix.com", "metadata.packet.net",
})
"""Cloud metadata service names: refused before any DNS lookup."""
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack ... (link-local anyway)
    "169.254.170.2",  # AWS ECS task metadata (link-local anyway)
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "fd20:ce::254",  # GCP metadata over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure WireServer
    "192.0.0.192",  # Oracle Cloud Classic
))
"""Cloud metadata service addresses outside the link-local ranges: always refused."""
_NOT_UNICAST = (ipaddress.ip_network("0.0.0.0/8"), ipaddress.ip_network("240.0.0.0/4"),
                ipaddress.ip_network("255.255.255.255/32"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressClass(Enum):
    PUBLIC = "public"
    INTERNAL = "internal"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class AllowedHost:
    """One ``bridge.allowed_hosts`` entry: ``host`` lower-case (an IPv6 literal without brackets, compressed),
    ``wildcard`` for ``*.``-entries (``host`` is then the parent domain), ``port`` ``None`` = the default port."""

    host: str
    port: int | None = None
    wildcard: bool = False
    literal_ip: bool = False

    def __str__(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        shown = f"*.{shown}" if self.wildcard else shown
        return shown if self.port is None else f"{shown}:{self.port}"

    def matches(self, host: str, port: int, scheme: str) -> bool:
        """Whether this entry admits ``host`` (normalised, see :func:`normalise_host`) on ``port``."""
        if (self.port if self.port is not None else DEFAULT_PORTS[scheme]) != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host) and not _is_ip(host)
        return host == self.host

    @property
    def explicit(self) -> bool:
        """An entry that names one host or one address (not a ``*.`` wildcard): it may admit internal ones."""
        return not self.wildcard


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_name(name: str) -> str:
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError("not a host name (letters, digits, '-', '_' and dots)")
    last = name.rsplit(".", 1)[-1]
    if last.isdigit() or re.fullmatch(r"0x[0-9a-f]*", last):
        raise ValueError("a numeric name that is no dotted-quad IPv4 address")
    return name


def parse_entry(text: str) -> AllowedHost:
    """One entry (``host``, ``host:port``, ``*.domain[:port]``, ``a.b.c.d[:port]``, ``[v6][:port]``)."""
    entry = text.strip().lower()
    if not entry or any(ch in entry for ch in "/@?# \t"):
        raise ValueError("give host[:port] only")
    port: int | None = None
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0:
            raise ValueError("unclosed [")
        host, rest = entry[1:end], entry[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected :port after ]")
            port = _port(rest[1:])
        try:
            return AllowedHost(str(ipaddress.IPv6Address(host)), port, literal_ip=True)
        except ValueError:
            raise ValueError("not an IPv6 address") from None
    if entry.count(":") > 1:
        raise ValueError("write an IPv6 address in brackets")
    if ":" in entry:
        entry, raw_port = entry.rsplit(":", 1)
        port = _port(raw_port)
    entry = entry.removesuffix(".")
    wildcard = entry.startswith("*.")
    name = entry[2:] if wildcard else entry
    try:
        address = ipaddress.IPv4Address(name)
    except ValueError:
        return AllowedHost(_check_name(name), port, wildcard=wildcard)
    if wildcard:
        raise ValueError("*. applies to domain names, not addresses")
    return AllowedHost(str(address), port, literal_ip=True)


def _port(raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError("the port must be 1-65535")
    return int(raw)


def parse_allowed_hosts(value: str | None) -> tuple[AllowedHost, ...] | None:
    """A secret's ``bridge.allowed_hosts``: its entries, or ``None`` when absent or empty (not brokerable).
    Raises ``ValueError`` for a malformed value (also not brokerable; the message names the bad entry)."""
    if value is None:
        return None
    if len(value.encode()) > MAX_ALLOWED_HOSTS_BYTES:
        raise ValueError(f"longer than {MAX_ALLOWED_HOSTS_BYTES} bytes")
    entries: list[AllowedHost] = []
    for part in value.split(","):
        if not part.strip():
            continue
        try:
            entries.append(parse_entry(part))
        except ValueError as exc:
            raise ValueError(f"entry {part.strip()[:80]!r}: {exc}") from None
    return tuple(dict.fromkeys(entries)) or None


def normalise_host(raw_host: str) -> str:
    """A URL's host as entries are compared with it: lower-case, no trailing dot, an IPv6 literal compressed.
    Raises ``ValueError`` for a host that is no IP literal and no valid DNS name (``2130706433``, ``0x7f.1``)."""
    host = raw_host.lower().removesuffix(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host:
        raise ValueError("empty host")
    return _check_name(host)


def _embedded_v4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found: list[ipaddress.IPv4Address] = []
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def classify(address: IPAddress) -> AddressClass:
    """The class of one destination address (see the module docstring)."""
    inner: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # the connection goes to that IPv4 address
            return classify(address.ipv4_mapped)
        inner.extend(_embedded_v4(address))
    worst = AddressClass.PUBLIC
    for ip in inner:
        if (ip in METADATA_ADDRESSES or ip.is_link_local or ip.is_multicast or ip.is_unspecified
                or (isinstance(ip, ipaddress.IPv4Address) and any(ip in net for net in _NOT_UNICAST))):
            return AddressClass.REFUSED
        if not ip.is_global:
            worst = AddressClass.INTERNAL
    return worst


class HostResolver(Protocol):
    """DNS for the broker: the addresses of ``host``, in preference order. Raises ``OSError`` when the name
    does not resolve. Tests inject a fake one; :class:`SystemResolver` asks the operating system."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]: ...


class SystemResolver:
    """``getaddrinfo`` in the loop's executor (what aiohttp's default resolver does), addresses de-duplicated."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        seen: dict[IPAddress, None] = {}
        for family, _type, _proto, _name, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                seen.setdefault(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]), None)
        return list(seen)


def explicit_for_all(entries_per_secret: Iterable[tuple[AllowedHost, ...]], host: str, port: int,
                     scheme: str) -> bool:
    """Whether every secret lists the destination explicitly (an exact name or IP entry matches it)."""
    return all(any(e.explicit and e.matches(host, port, scheme) for e in entries) for entries in entries_per_secret)


__all__ = ["METADATA_ADDRESSES", "METADATA_HOSTS", "AddressClass", "AllowedHost", "HostResolver", "IPAddress",
           "SystemResolver", "classify", "explicit_for_all", "normalise_host", "parse_allowed_hosts",
           "parse_entry"]
