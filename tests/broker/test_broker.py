"""Brokered HTTP against local servers that record what they received (bridge/broker/broker.py).

The destination must receive the substituted value; the answer to the agent must hold no form of it. Names are
resolved by a fake DNS (``api.test`` → 127.0.0.1), which also proves that the connection is pinned to the
address the broker checked: ``api.test`` exists in no real DNS, so a second lookup by aiohttp would fail.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from structlog.testing import capture_logs

from bridge.broker import Broker, BrokerHttpBody
from bridge.errors import BridgeError, BrokerRefusedError, BrokerUpstreamError, InvalidReferenceError, NotFoundError
from tests.broker.conftest import FakeDNS, MakeUpstream, Pki, SecretTable, answer_text

CANARIES = [
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "p@ss w/rd+&=?#%\"'<>\\",
    "pässwörd-ü€-日本語",
    "ghp_" + "A1b2" * 9,
    "x" * 40 + "/+=",
]


def forms(value: str) -> list[str]:
    raw = value.encode()
    found = [value, base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("="),
             base64.urlsafe_b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
             quote(value, safe=""), quote(value), quote_plus(value), json.dumps(value)[1:-1],
             json.dumps(value, ensure_ascii=False)[1:-1]]
    return [f for f in found if len(f) >= 4]


def assert_clean(answer: Any, *values: str) -> None:
    text = answer_text(answer)
    decoded = ""
    if answer.body_encoding == "base64":
        decoded = base64.b64decode(answer.body).decode("latin-1")
    for value in values:
        for form in forms(value):
            assert form not in text, f"a form of a secret reached the agent: {form!r}"
            assert form not in decoded


def req(url: str, **kw: Any) -> BrokerHttpBody:
    return BrokerHttpBody(method=kw.pop("method", "GET"), url=url, **kw)


@pytest.mark.parametrize("value", CANARIES)
async def test_value_arrives_and_no_form_of_it_comes_back(broker: Broker, make_upstream: MakeUpstream,
                                                          secrets_table: SecretTable, value: str) -> None:
    api = await make_upstream()
    fp = secrets_table.add("app/api", "token", value, f"api.test:{api.port}")
    body = json.dumps({"key": "{{secret://app/api#token}}"})
    answer = await broker.send(req(f"http://api.test:{api.port}/echo?k={{{{secret://app/api#token}}}}&x=1",
                                   method="POST",
                                   headers={"X-Token": "{{ secret://app/api#token }}",
                                            "Authorization": "Bearer {{secret://app/api#token}}",
                                            "Content-Type": "application/json"},
                                   body=body), secrets_table.resolve)
    # what the destination received: the value, in each place, the URL one percent-encoded
    [got] = api.received
    assert got.method == "POST"
    assert got.headers["X-Token"] == value
    assert got.headers["Authorization"] == f"Bearer {value}"
    assert got.path_qs == f"/echo?k={quote(value, safe='')}&x=1"
    assert json.loads(got.body) == {"key": value}
    assert got.headers["Host"] == f"api.test:{api.port}"
    assert got.headers["User-Agent"] == "vault-mcp-bridge"
    assert "Cookie" not in got.headers
    # what the agent gets: the answer, every form replaced by the fingerprint marker
    assert answer.status == 200
    assert answer.body_encoding == "text"
    assert_clean(answer, value)
    echoed = json.loads(answer.body)
    assert echoed["headers"]["X-Token"] == f"[redacted:{fp}]"
    for name in ("b64", "b64url_nopad", "quote", "quote_plus", "raw"):
        assert echoed["forms"][name] == f"[redacted:{fp}]", name
    assert f"[redacted:{fp}]" in echoed["forms"]["basic"]  # base64("user:" + value): the value's part is gone
    headers = dict(answer.headers)
    assert headers["X-Echo-Token"] == f"[redacted:{fp}]"
    assert headers["X-Echo-B64"] == f"[redacted:{fp}]"
    assert f"[redacted:{fp}]" in headers["Set-Cookie"]
    assert answer.redactions >= 10
    assert secrets_table.asked == [secrets_table.asked[0]]  # one resolution for three uses


async def test_html_binary_gzip_and_charset_bodies(broker: Broker, make_upstream: MakeUpstream,
                                                   secrets_table: SecretTable) -> None:
    api = await make_upstream()
    value = 'tok<&>"en-' + "z" * 12
    fp = secrets_table.add("t", "v", value, f"api.test:{api.port}")
    headers = {"X-Token": "{{secret://t#v}}"}
    html = await broker.send(req(f"http://api.test:{api.port}/html", headers=headers), secrets_table.resolve)
    assert html.body == f'<p title="[redacted:{fp}]">[redacted:{fp}]</p>'
    binary = await broker.send(req(f"http://api.test:{api.port}/binary", headers=headers), secrets_table.resolve)
    assert binary.body_encoding == "base64"
    raw = base64.b64decode(binary.body)
    assert raw == b"\x00\xff\xfe" + f"[redacted:{fp}]\x01[redacted:{fp}]".encode()
    gz = await broker.send(req(f"http://api.test:{api.port}/gzipped", headers=headers), secrets_table.resolve)
    assert gz.body == f"gz [redacted:{fp}] gz"
    wide = await broker.send(req(f"http://api.test:{api.port}/utf16", headers=headers), secrets_table.resolve)
    assert wide.body_encoding == "text"
    assert wide.body == f"token=[redacted:{fp}]"
    for answer in (html, binary, gz, wide):
        assert_clean(answer, value)


async def test_every_used_secret_must_allow_the_destination(broker: Broker, make_upstream: MakeUpstream,
                                                            secrets_table: SecretTable) -> None:
    api = await make_upstream()
    secrets_table.add("a", "v", "value-a-" + "1" * 10, f"api.test:{api.port}")
    secrets_table.add("b", "v", "value-b-" + "2" * 10, "elsewhere.example.com")
    with pytest.raises(BrokerRefusedError) as info:
        await broker.send(req(f"http://api.test:{api.port}/", headers={"A": "{{secret://a#v}}",
                                                                       "B": "{{secret://b#v}}"}),
                          secrets_table.resolve)
    assert info.value.status == 403
    assert info.value.code == "broker_host_not_allowed"
    assert info.value.extra["reference"] == "secret://b#v"
    assert api.received == []


@pytest.mark.parametrize(("allowed", "url_host", "port_in_entry"), [
    ("api.test", "api.test", False),  # no port in the entry: only the scheme's default port
    ("other.test", "api.test", True),
    ("*.test", "api.test", True),  # a wildcard never admits an internal address (checked below)
    ("*.api.test", "api.test", True),  # not the apex
])
async def test_host_not_allowed(broker: Broker, make_upstream: MakeUpstream, secrets_table: SecretTable,
                                allowed: str, url_host: str, port_in_entry: bool) -> None:
    api = await make_upstream()
    entry = f"{allowed}:{api.port}" if port_in_entry else allowed
    secrets_table.add("a", "v", "value-" + "9" * 12, entry)
    with pytest.raises(BrokerRefusedError) as info:
        await broker.send(req(f"http://{url_host}:{api.port}/", headers={"A": "{{secret://a#v}}"}),
                          secrets_table.resolve)
    assert info.value.code in ("broker_host_not_allowed", "broker_address_refused")
    if allowed == "*.test":
        assert info.value.code == "broker_address_refused"  # matched, but 127.0.0.1 needs an explicit entry
        assert info.value.extra["address_classes"] == ["internal"]
    else:
        assert info.value.code == "broker_host_not_allowed"
    assert api.received == []


async def test_not_brokerable(broker: Broker, secrets_table: SecretTable) -> None:
    secrets_table.add("none", "v", "value-" + "8" * 12, None)
    secrets_table.add("bad", "v", "value-" + "7" * 12, "api.test,https://x")
    for path in ("none", "bad"):
        with pytest.raises(BrokerRefusedError) as info:
            await broker.send(req("https://api.test/", headers={"A": f"{{{{secret://{path}#v}}}}"}),
                              secrets_table.resolve)
        assert info.value.code == "broker_not_brokerable"
        assert info.value.extra == {"reference": f"secret://{path}#v"}
    with pytest.raises(NotFoundError):  # the resolver's own errors pass through
        await broker.send(req("https://api.test/", headers={"A": "{{secret://missing#v}}"}), secrets_table.resolve)


@pytest.mark.parametrize(("url", "allowed", "dns_answer"), [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", None),
    ("http://[fd00:ec2::254]/", "[fd00:ec2::254]", None),
    ("http://[::ffff:169.254.169.254]/", "[::ffff:169.254.169.254]", None),
    ("http://100.100.100.200/", "100.100.100.200", None),
    ("http://[fe80::1]/", "[fe80::1]", None),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal", None),
    ("http://evil.test/", "evil.test", ["169.254.169.254"]),
    ("http://evil.test/", "evil.test", ["fe80::1234"]),
    ("http://evil.test/", "evil.test", ["0.0.0.0"]),
    ("http://evil.test/", "evil.test", ["64:ff9b::a9fe:a9fe"]),
])
async def test_metadata_and_link_local_always_refused(secrets_table: SecretTable, url: str, allowed: str,
                                                      dns_answer: list[str] | None) -> None:
    dns = FakeDNS({"evil.test": dns_answer} if dns_answer else {})
    secrets_table.add("a", "v", "value-" + "6" * 12, allowed)
    async with Broker(dns=dns) as broker:
        with pytest.raises(BrokerRefusedError) as info:
            await broker.send(req(url, headers={"A": "{{secret://a#v}}"}), secrets_table.resolve)
    assert info.value.code == "broker_address_refused"
    assert info.value.status == 403


async def test_metadata_refused_before_any_secret_is_read(broker: Broker, secrets_table: SecretTable) -> None:
    with pytest.raises(BrokerRefusedError):
        await broker.send(req("http://169.254.169.254/", headers={"A": "{{secret://a#v}}"}), secrets_table.resolve)
    assert secrets_table.asked == []


async def test_internal_addresses_only_when_listed_explicitly(make_upstream: MakeUpstream,
                                                              secrets_table: SecretTable) -> None:
    api = await make_upstream()
    dns = FakeDNS({"api.test": ["127.0.0.1"], "mixed.test": ["169.254.169.254", "10.255.255.1", "127.0.0.1"]})
    async with Broker(dns=dns) as broker:
        headers = {"A": "{{secret://a#v}}"}
        # the literal address, listed
        secrets_table.add("a", "v", "value-" + "5" * 12, f"127.0.0.1:{api.port}")
        ok = await broker.send(req(f"http://127.0.0.1:{api.port}/x", headers=headers), secrets_table.resolve)
        assert ok.status == 200
        # the exact name, listed
        secrets_table.add("a", "v", "value-" + "5" * 12, f"api.test:{api.port}")
        ok = await broker.send(req(f"http://api.test:{api.port}/y", headers=headers), secrets_table.resolve)
        assert ok.status == 200
        # listed exactly by one secret and through a wildcard by the other: refused
        secrets_table.add("b", "v", "value-" + "4" * 12, f"*.test:{api.port}")
        with pytest.raises(BrokerRefusedError) as info:
            await broker.send(req(f"http://api.test:{api.port}/z", headers={**headers, "B": "{{secret://b#v}}"}),
                              secrets_table.resolve)
        assert info.value.code == "broker_address_refused"
        # a name resolving to refused and internal addresses: only the explicitly allowed internal one is used
        secrets_table.add("a", "v", "value-" + "5" * 12, f"mixed.test:{api.port}")
        ok = await broker.send(req(f"http://mixed.test:{api.port}/m", headers=headers), secrets_table.resolve)
        assert ok.status == 200
    assert [r.path_qs for r in api.received] == ["/x", "/y", "/m"]


async def test_dns_resolved_once_and_connection_pinned(make_upstream: MakeUpstream,
                                                       secrets_table: SecretTable) -> None:
    """A rebinding DNS answers 127.0.0.1 first and 127.0.0.2 after, where another server listens on the same
    port. The broker asks once and connects to the address it checked: a second lookup between the check and
    the connection (by aiohttp or by the broker) would have sent the secret to the other server."""
    api = await make_upstream()
    attacker = await make_upstream(host="127.0.0.2", port=api.port)
    dns = FakeDNS({"api.test": [["127.0.0.1"], ["127.0.0.2"]]})
    secrets_table.add("a", "v", "value-" + "3" * 12, f"api.test:{api.port}")
    async with Broker(dns=dns) as broker:
        answer = await broker.send(req(f"http://api.test:{api.port}/p", headers={"A": "{{secret://a#v}}"}),
                                   secrets_table.resolve)
    assert answer.status == 200
    assert dns.calls == {"api.test": 1}
    assert len(api.received) == 1
    assert attacker.received == []


async def test_rebinding_second_call_refused(make_upstream: MakeUpstream, secrets_table: SecretTable) -> None:
    api = await make_upstream()
    dns = FakeDNS({"api.test": [["127.0.0.1"], ["169.254.169.254"]]})
    secrets_table.add("a", "v", "value-" + "3" * 12, f"api.test:{api.port}")
    async with Broker(dns=dns) as broker:
        first = await broker.send(req(f"http://api.test:{api.port}/p", headers={"A": "{{secret://a#v}}"}),
                                  secrets_table.resolve)
        assert first.status == 200
        assert dns.calls["api.test"] == 1  # one lookup per call, none by aiohttp
        with pytest.raises(BrokerRefusedError):
            await broker.send(req(f"http://api.test:{api.port}/p", headers={"A": "{{secret://a#v}}"}),
                              secrets_table.resolve)
        assert dns.calls["api.test"] == 2
    assert len(api.received) == 1


async def test_redirects_are_not_followed(broker: Broker, make_upstream: MakeUpstream,
                                          secrets_table: SecretTable) -> None:
    api, other = await make_upstream(), await make_upstream()
    secrets_table.add("a", "v", "value-" + "2" * 12, f"api.test:{api.port}")
    for target in (f"http://other.test:{other.port}/stolen", f"http://api.test:{api.port}/same-origin"):
        answer = await broker.send(req(f"http://api.test:{api.port}/redirect?to={quote(target, safe='')}",
                                       headers={"A": "{{secret://a#v}}"}), secrets_table.resolve)
        assert answer.status == 302
        assert dict(answer.headers)["Location"] == target
    assert other.received == []
    assert [r.path_qs.split("?")[0] for r in api.received] == ["/redirect", "/redirect"]


async def test_timeout_bounds_the_whole_call(make_upstream: MakeUpstream, secrets_table: SecretTable,
                                             dns: FakeDNS) -> None:
    api = await make_upstream()
    secrets_table.add("a", "v", "value-" + "1" * 12, f"api.test:{api.port}")
    async with Broker(timeout=0.5, dns=dns) as broker:
        for path in ("/slow", "/trickle"):  # no answer; an answer that never ends (each read is quick)
            started = time.monotonic()
            with pytest.raises(BrokerUpstreamError) as info:
                await broker.send(req(f"http://api.test:{api.port}{path}", headers={"A": "{{secret://a#v}}"}),
                                  secrets_table.resolve)
            assert info.value.code == "broker_timeout"
            assert info.value.status == 504
            assert time.monotonic() - started < 30  # far below the servers' 60 s


@pytest.mark.parametrize("query", ["n=65536", "n=65537", "n=70000&chunked=1"])
async def test_response_size_cap(broker: Broker, make_upstream: MakeUpstream, secrets_table: SecretTable,
                                 query: str) -> None:
    api = await make_upstream()
    secrets_table.add("a", "v", "value-" + "0" * 12, f"api.test:{api.port}")
    call = broker.send(req(f"http://api.test:{api.port}/big?{query}", headers={"A": "{{secret://a#v}}"}),
                       secrets_table.resolve)
    if query == "n=65536":  # exactly BROKER_MAX_RESPONSE_BYTES (64 KiB here)
        assert len((await call).body) == 65536
        return
    with pytest.raises(BrokerUpstreamError) as info:
        await call
    assert info.value.code == "broker_response_too_large"
    assert info.value.status == 502
    assert info.value.extra["upstream_status"] == 200


async def test_decoded_size_is_capped_and_unknown_encodings_refused(broker: Broker, make_upstream: MakeUpstream,
                                                                    secrets_table: SecretTable) -> None:
    api = await make_upstream()
    secrets_table.add("a", "v", "value-" + "0" * 12, f"api.test:{api.port}")
    with pytest.raises(BrokerUpstreamError) as info:  # 8 MiB of zeros in a few KiB of gzip
        await broker.send(req(f"http://api.test:{api.port}/gzip-bomb", headers={"A": "{{secret://a#v}}"}),
                          secrets_table.resolve)
    assert info.value.code == "broker_response_too_large"
    with pytest.raises(BrokerUpstreamError) as info:  # not decodable here, so not redactable: not returned
        await broker.send(req(f"http://api.test:{api.port}/brotli", headers={"A": "{{secret://a#v}}"}),
                          secrets_table.resolve)
    assert info.value.code == "broker_bad_response"
    assert [r.headers["Accept-Encoding"] for r in api.received] == ["gzip, deflate"] * 2


async def test_request_body_cap_after_substitution(broker: Broker, make_upstream: MakeUpstream,
                                                   secrets_table: SecretTable) -> None:
    api = await make_upstream()
    secrets_table.add("a", "v", "v" * 4000, f"api.test:{api.port}")
    body = "{{secret://a#v}}" * 5  # 80 characters, 20000 bytes once substituted (the cap is 16 KiB here)
    with pytest.raises(BridgeError) as info:
        await broker.send(req(f"http://api.test:{api.port}/", method="POST", body=body), secrets_table.resolve)
    assert info.value.status == 413
    assert info.value.code == "broker_request_too_large"
    assert api.received == []


async def test_connect_failures(broker: Broker, secrets_table: SecretTable) -> None:
    from devtools.devvault import free_port

    port = free_port()  # nothing listens there
    secrets_table.add("a", "v", "value-" + "c" * 12, f"api.test:{port},nowhere.test")
    with pytest.raises(BrokerUpstreamError) as info:
        await broker.send(req(f"http://api.test:{port}/", headers={"A": "{{secret://a#v}}"}), secrets_table.resolve)
    assert info.value.code == "broker_connect_failed"
    with pytest.raises(BrokerUpstreamError) as info:
        await broker.send(req("http://nowhere.test/", headers={"A": "{{secret://a#v}}"}), secrets_table.resolve)
    assert info.value.code == "broker_connect_failed"
    assert "does not resolve" in info.value.message


async def test_https_verifies_the_certificate_for_the_name(make_upstream: MakeUpstream, secrets_table: SecretTable,
                                                           dns: FakeDNS, pki: Pki) -> None:
    good = await make_upstream(pki.server_context(["api.test"]))
    wrong = await make_upstream(pki.server_context(["wrong.test"]))
    secrets_table.add("a", "v", "value-" + "h" * 12, f"api.test:{good.port},api.test:{wrong.port}")
    headers = {"X-Token": "{{secret://a#v}}"}
    async with Broker(dns=dns, ca_file=str(pki.ca_path)) as broker:
        answer = await broker.send(req(f"https://api.test:{good.port}/echo", headers=headers), secrets_table.resolve)
        assert answer.status == 200
        assert good.received[0].headers["X-Token"] == "value-" + "h" * 12
        with pytest.raises(BrokerUpstreamError) as info:
            await broker.send(req(f"https://api.test:{wrong.port}/echo", headers=headers), secrets_table.resolve)
        assert info.value.code == "broker_tls_failed"
    async with Broker(dns=dns) as untrusting:  # the system trust store does not know the test CA
        with pytest.raises(BrokerUpstreamError) as info:
            await untrusting.send(req(f"https://api.test:{good.port}/echo", headers=headers), secrets_table.resolve)
        assert info.value.code == "broker_tls_failed"
    assert wrong.received == []
    assert len(good.received) == 1


@pytest.mark.parametrize(("request_kw", "message"), [
    ({"url": "ftp://api.test/{{secret://a#v}}"}, "Only http and https"),
    ({"url": "http://{{secret://a#v}}.test/"}, "never in its host"),
    ({"url": "http://user:{{secret://a#v}}@api.test/"}, "user info"),
    ({"url": "http://api.test/a b?{{secret://a#v}}"}, "percent-encode"),
    ({"url": "http://api.test/ä?{{secret://a#v}}"}, "percent-encoded"),
    ({"url": "/relative?{{secret://a#v}}"}, "absolute"),
    ({"url": "http://api.test/\n{{secret://a#v}}"}, "control character"),
    ({"url": "http://api.test:99999/{{secret://a#v}}"}, "malformed"),
    ({"url": "http://api.test/#{{secret://a#v}}"}, "at least one secret reference"),
    ({"url": "http://2130706433/{{secret://a#v}}"}, "host is not usable"),
    ({"url": "http://api.test/", "method": "TRACE", "headers": {"A": "{{secret://a#v}}"}}, "cannot be brokered"),
    ({"url": "http://api.test/", "method": "CONNECT", "headers": {"A": "{{secret://a#v}}"}}, "cannot be brokered"),
    ({"url": "http://api.test/", "headers": {"Host": "x", "A": "{{secret://a#v}}"}}, "set by the bridge"),
    ({"url": "http://api.test/", "headers": {"Accept-Encoding": "br", "A": "{{secret://a#v}}"}}, "set by the bridge"),
    ({"url": "http://api.test/", "headers": {"A": "{{secret://a#v}}", "a": "x"}}, "given twice"),
    ({"url": "http://api.test/", "headers": {"Bad Name": "{{secret://a#v}}"}}, "HTTP token"),
    ({"url": "http://api.test/", "headers": {"A": "no reference"}}, "at least one secret reference"),
])
async def test_bad_requests_are_400_and_read_nothing(broker: Broker, secrets_table: SecretTable,
                                                     request_kw: dict[str, Any], message: str) -> None:
    with pytest.raises(BridgeError) as info:
        await broker.send(req(**request_kw), secrets_table.resolve)
    assert info.value.status == 400
    assert message in info.value.message
    assert secrets_table.asked == []


async def test_bad_references_are_invalid_reference(broker: Broker, secrets_table: SecretTable) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        await broker.send(req("http://api.test/", method="POST", body='{"k": "{{secret://../x#y}}"}'),
                          secrets_table.resolve)
    assert info.value.extra == {"where": "body", "position": 7}
    assert secrets_table.asked == []


async def test_a_value_cannot_inject_headers(broker: Broker, make_upstream: MakeUpstream,
                                             secrets_table: SecretTable) -> None:
    api = await make_upstream()
    value = "abc\r\nX-Injected: 1"
    secrets_table.add("a", "v", value, f"api.test:{api.port}")
    with pytest.raises(BridgeError) as info:
        await broker.send(req(f"http://api.test:{api.port}/", headers={"A": "{{secret://a#v}}"}),
                          secrets_table.resolve)
    assert info.value.status == 400
    assert "line break" in info.value.message
    assert "X-Injected" not in info.value.message
    # in the URL it is percent-encoded, in the body it goes as it is
    answer = await broker.send(req(f"http://api.test:{api.port}/echo?v={{{{secret://a#v}}}}", method="POST",
                                   body="{{secret://a#v}}"), secrets_table.resolve)
    assert api.received[0].path_qs == "/echo?v=" + quote(value, safe="")
    assert api.received[0].body == value.encode()
    assert_clean(answer, value)


async def test_nothing_secret_in_logs_or_errors(make_upstream: MakeUpstream, secrets_table: SecretTable,
                                                dns: FakeDNS) -> None:
    api = await make_upstream()
    value = "canary-" + "L" * 24
    secrets_table.add("a", "v", value, f"api.test:{api.port}")
    errors: list[str] = []
    with capture_logs() as logs:
        async with Broker(timeout=1.0, dns=dns, max_response_bytes=1024) as broker:
            await broker.send(req(f"http://api.test:{api.port}/echo?q={{{{secret://a#v}}}}",
                                  headers={"X-Token": "{{secret://a#v}}"}), secrets_table.resolve)
            for path in ("/slow", "/big?n=5000", "/brotli"):
                try:
                    await broker.send(req(f"http://api.test:{api.port}{path}&q={{{{secret://a#v}}}}"
                                          if "?" in path else f"http://api.test:{api.port}{path}?q={{{{secret://a#v}}}}",
                                          headers={"X-Token": "{{secret://a#v}}"}), secrets_table.resolve)
                except BridgeError as exc:
                    errors.append(json.dumps(exc.to_dict()))
    assert len(errors) == 3
    assert any(e["event"] == "broker.request.sent" for e in logs)
    everything = json.dumps(logs, default=str) + "".join(errors)
    for form in forms(value):
        assert form not in everything
    assert "/echo" not in everything  # the path and query are never logged


async def test_broker_ctx_owns_the_session(make_settings: Any, aiohttp_client: Any) -> None:
    from aiohttp import web

    from bridge.broker.ctx import broker_ctx
    from bridge.keys import BROKER, SETTINGS

    app = web.Application()
    app[SETTINGS] = make_settings(broker_timeout="5s", broker_max_response_bytes=4096)
    app.cleanup_ctx.append(broker_ctx)
    client = await aiohttp_client(app)
    broker = app[BROKER]
    assert broker.timeout == 5.0
    assert broker.max_response_bytes == 4096
    assert broker._client._session is not None
    await client.close()
    assert broker._client._session is None


async def test_body_encoding_follows_the_content_type(broker: Broker, make_upstream: MakeUpstream,
                                                      secrets_table: SecretTable) -> None:
    api = await make_upstream()
    value = 'a "quoted" & +plus\\ value'
    secrets_table.add("a", "v", value, f"api.test:{api.port}")
    url = f"http://api.test:{api.port}/echo"
    for content_type, body, expected in (
        ("application/json; charset=utf-8", '{"k": "{{secret://a#v}}"}', json.dumps({"k": value})),
        ("application/vnd.api+json", '["{{secret://a#v}}"]', json.dumps([value])),
        ("application/x-www-form-urlencoded", "k={{secret://a#v}}&x=1", f"k={quote_plus(value)}&x=1"),
        ("text/plain", "k={{secret://a#v}}", f"k={value}"),
    ):
        answer = await broker.send(req(url, method="PUT", headers={"Content-Type": content_type}, body=body),
                                   secrets_table.resolve)
        assert api.received[-1].body.decode() == expected
        assert_clean(answer, value)


async def test_lease_placeholders_are_brokered_by_their_roles_allowed_hosts(
        broker: Broker, make_upstream: MakeUpstream, secrets_table: SecretTable) -> None:
    """``{{lease://<lease_id>#password}}`` (a database password the bridge holds for the agent) is substituted like
    a secret; the resolver answers its database role's ``allowed_hosts``, and a refusal says where to fix them."""
    api = await make_upstream()
    lease = "database/creds/mcp.alice.ro/AbC123"
    fp = secrets_table.add(lease, "password", CANARIES[1], f"api.test:{api.port}")
    secrets_table.add("database/creds/mcp.alice.ro/Other", "password", "pw-x", None)
    secrets_table.add("app/db", "user", "v-alice", f"api.test:{api.port}")
    answer = await broker.send(req(f"http://api.test:{api.port}/echo", headers={
        "X-Token": f"{{{{lease://{lease}#password}}}}", "X-User": "{{secret://app/db#user}}"}), secrets_table.resolve)
    assert api.received[0].headers["X-Token"] == CANARIES[1]
    assert api.received[0].headers["X-User"] == "v-alice"
    assert_clean(answer, CANARIES[1])
    assert json.loads(answer.body)["headers"]["X-Token"] == f"[redacted:{fp}]"
    with pytest.raises(BrokerRefusedError) as info:
        await broker.send(req(f"http://api.test:{api.port}/echo", headers={
            "X-Token": "{{lease://database/creds/mcp.alice.ro/Other#password}}"}), secrets_table.resolve)
    assert info.value.code == "broker_not_brokerable"
    assert "database role has no allowed_hosts" in info.value.message
    assert "provision --dynamic" in info.value.message
    with pytest.raises(InvalidReferenceError):  # a lease reference names the password only
        await broker.send(req(f"http://api.test:{api.port}/echo", headers={"X-Token": f"{{{{lease://{lease}#user}}}}"}),
                          secrets_table.resolve)
    assert len(api.received) == 1
