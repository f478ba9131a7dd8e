"""``bridge.allowed_hosts`` entries and destination address classes (bridge/broker/hosts.py)."""

from __future__ import annotations

import ipaddress

import pytest

from bridge.broker.hosts import (
    AddressClass,
    AllowedHost,
    SystemResolver,
    classify,
    normalise_host,
    parse_allowed_hosts,
    parse_entry,
)
from bridge.secret_policy import parse_allowed_hosts as policy_normalise


def test_entries_parse() -> None:
    assert parse_entry("API.Example.com.") == AllowedHost("api.example.com")
    assert parse_entry("api.example.com:8443") == AllowedHost("api.example.com", 8443)
    assert parse_entry("*.svc.internal") == AllowedHost("svc.internal", wildcard=True)
    assert parse_entry("10.0.0.5:80") == AllowedHost("10.0.0.5", 80, literal_ip=True)
    assert parse_entry("[FD00:0::5]:443") == AllowedHost("fd00::5", 443, literal_ip=True)
    assert str(parse_entry("*.a.b:1")) == "*.a.b:1"
    assert str(parse_entry("[::1]:8080")) == "[::1]:8080"


@pytest.mark.parametrize("entry", ["", "https://a.com", "a.com/x", "user@a.com", "a.com:0", "a.com:65536", "a.com:",
                                   "a.com:x", "*.10.0.0.1", "[::1", "[zz::1]", "::1", "[::1]x", "a..com", "-a.com",
                                   "a_.com:1:2", "2130706433", "0x7f.1", "a b"])
def test_bad_entries(entry: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each reason is its own message
        parse_entry(entry)


def test_absent_empty_and_malformed_values() -> None:
    assert parse_allowed_hosts(None) is None
    assert parse_allowed_hosts("") is None
    assert parse_allowed_hosts(" , ") is None
    assert parse_allowed_hosts("a.com, *.b.com:8443") == (AllowedHost("a.com"), AllowedHost("b.com", 8443, True))
    with pytest.raises(ValueError, match="entry 'http://x'"):
        parse_allowed_hosts("a.com,http://x")
    with pytest.raises(ValueError, match="512 bytes"):
        parse_allowed_hosts("a" * 513)


@pytest.mark.parametrize("value", ["api.example.com:443,*.svc.internal", "10.0.0.5,[fd00::5]:8443",
                                   "A.COM,a.com,*.x.y:1"])
def test_what_secret_policy_writes_is_read_the_same(value: str) -> None:
    """``secret-policy --allowed-hosts`` normalises entries; the broker reads its output to the same entries."""
    written = policy_normalise(value)
    assert written is not None
    assert parse_allowed_hosts(written) == parse_allowed_hosts(value)


def test_matching_rules() -> None:
    exact, wild, port = parse_entry("api.example.com"), parse_entry("*.example.com"), parse_entry("a.b:8080")
    assert exact.matches("api.example.com", 443, "https")
    assert exact.matches("api.example.com", 80, "http")
    assert not exact.matches("api.example.com", 8443, "https")  # no port: the scheme's default only
    assert not exact.matches("x.api.example.com", 443, "https")
    assert wild.matches("a.example.com", 443, "https")
    assert wild.matches("a.b.example.com", 443, "https")
    assert not wild.matches("example.com", 443, "https")
    assert not wild.matches("badexample.com", 443, "https")
    assert port.matches("a.b", 8080, "https")
    assert not port.matches("a.b", 443, "https")
    assert exact.explicit
    assert not wild.explicit
    assert parse_entry("127.0.0.1:9").matches("127.0.0.1", 9, "http")


def test_normalise_host() -> None:
    assert normalise_host("API.Example.COM.") == "api.example.com"
    assert normalise_host("[::FFFF:127.0.0.1]") == "::ffff:7f00:1"
    assert normalise_host("127.0.0.1") == "127.0.0.1"
    for bad in ("2130706433", "0x7f000001", "127.1", "a..b", ""):
        with pytest.raises(ValueError):  # noqa: PT011
            normalise_host(bad)


@pytest.mark.parametrize(("address", "kind"), [
    ("93.184.216.34", AddressClass.PUBLIC),
    ("2606:4700::1111", AddressClass.PUBLIC),
    ("::ffff:8.8.8.8", AddressClass.PUBLIC),
    ("127.0.0.1", AddressClass.INTERNAL),
    ("127.8.9.10", AddressClass.INTERNAL),
    ("::1", AddressClass.INTERNAL),
    ("10.1.2.3", AddressClass.INTERNAL),
    ("172.16.0.1", AddressClass.INTERNAL),
    ("192.168.1.1", AddressClass.INTERNAL),
    ("100.64.0.1", AddressClass.INTERNAL),
    ("fc00::1", AddressClass.INTERNAL),
    ("fd12:3456::1", AddressClass.INTERNAL),
    ("::ffff:10.0.0.1", AddressClass.INTERNAL),
    ("169.254.169.254", AddressClass.REFUSED),
    ("169.254.170.2", AddressClass.REFUSED),
    ("169.254.1.1", AddressClass.REFUSED),
    ("fe80::1", AddressClass.REFUSED),
    ("fd00:ec2::254", AddressClass.REFUSED),
    ("fd20:ce::254", AddressClass.REFUSED),
    ("100.100.100.200", AddressClass.REFUSED),
    ("168.63.129.16", AddressClass.REFUSED),
    ("192.0.0.192", AddressClass.REFUSED),
    ("::ffff:169.254.169.254", AddressClass.REFUSED),
    ("64:ff9b::a9fe:a9fe", AddressClass.REFUSED),  # NAT64 of 169.254.169.254
    ("2002:a9fe:a9fe::1", AddressClass.REFUSED),  # 6to4 of 169.254.169.254
    ("0.0.0.0", AddressClass.REFUSED),
    ("::", AddressClass.REFUSED),
    ("224.0.0.1", AddressClass.REFUSED),
    ("ff02::1", AddressClass.REFUSED),
    ("255.255.255.255", AddressClass.REFUSED),
    ("240.0.0.1", AddressClass.REFUSED),
])
def test_address_classes(address: str, kind: AddressClass) -> None:
    assert classify(ipaddress.ip_address(address)) is kind


async def test_system_resolver() -> None:
    addresses = await SystemResolver().resolve("localhost", 80)
    assert ipaddress.ip_address("127.0.0.1") in addresses or ipaddress.ip_address("::1") in addresses
    assert len(addresses) == len(set(addresses))
    with pytest.raises(OSError):  # noqa: PT011
        await SystemResolver().resolve("no-such-host.invalid", 80)
