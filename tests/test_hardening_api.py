"""Issue 15, broken guarantees 3 and 4, and the exact bearer token, on the local API (a real server).

3. Hostile JSON (30,000 deep, a 5,000-digit integer, a 400-digit lat/lon/ttl_s, duplicate
   keys, wrong types) gets the API's documented 4xx JSON error, never aiohttp's plain 500.
4. Every response carries the security headers: errors, 500s, and aiohttp's own 400 for a
   request it cannot parse.
And `Authorization: Bearer <token> ` (trailing space) is refused: only the exact form passes.
Every endpoint is fuzzed with hostile structure through hypothesis.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import threading

import pytest
from gateway_helpers import registry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import api as api_module
from gateway import logs
from gateway.api import API_CSP, SECURITY_HEADERS, Api
from gateway.downlinks import Downlinks
from gateway.pipeline import Pipeline
from gateway.store import Store

TOKEN = "a-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY = "00" * 16


class Server:
    """The API on its own event loop in a thread, so sync hypothesis tests can call it over HTTP."""

    def __init__(self, tmp_path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.api, self._close = self.run(self._open(tmp_path))

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _open(self, tmp_path):
        s = await Store.open(tmp_path / "gw.db")
        reg = registry(tmp_path / "nodes.toml", [1, 2])
        reg.save()
        d = Downlinks(s, reg, max_queued_per_node=1000)
        await d.start()
        p = Pipeline(reg, s, downlinks=d)
        api = Api(registry=reg, store=s, pipeline=p, downlinks=d, token=TOKEN, port=0)
        await api.start()

        async def close() -> None:
            await api.stop()
            await d.close()
            await s.close()

        return api, close

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.api.port, timeout=30)
        try:
            hdrs = dict(AUTH if headers is None else headers)
            if body is not None:
                hdrs["Content-Type"] = "application/json"
            c.request(method, path, body=body, headers=hdrs)
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def raw(self, data: bytes) -> bytes:
        """Send bytes as they are (http.client would fix them) and read the whole answer."""
        with socket.create_connection(("127.0.0.1", self.api.port), timeout=30) as s:
            s.sendall(data)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out

    def close(self) -> None:
        self.run(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("api"))
    yield s
    s.close()


def assert_locked_down(headers: dict[str, str]) -> None:
    for k, v in SECURITY_HEADERS.items():
        assert headers.get(k.lower()) == v, (k, headers)
    assert headers.get("content-security-policy") == API_CSP


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expect: int | None = None) -> str:
    assert 400 <= status < 500 if expect is None else status == expect, (status, body[:200])
    assert headers["content-type"].startswith("application/json"), headers
    assert_locked_down(headers)
    return json.loads(body)["error"]


DEEP_ARRAY = b"[" * 30_000 + b"]" * 30_000
DEEP_OBJECT = b'{"a":' * 30_000 + b"1" + b"}" * 30_000
HUGE = "9" * 5000
BIG = "9" * 400


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/nodes/00000003"), ("POST", "/nodes/00000001/commands"), ("PUT", "/nodes/00000001")],
)
@pytest.mark.parametrize(
    "body",
    [
        DEEP_ARRAY,
        DEEP_OBJECT,
        HUGE.encode(),
        f'{{"kind": "lighting", "root_key": "{KEY}", "lat": {HUGE}, "lon": 1}}'.encode(),
        f'{{"kind": "lighting", "root_key": "{KEY}", "lat": {BIG}, "lon": 1}}'.encode(),
        f'{{"kind": "lighting", "root_key": "{KEY}", "lat": 1, "lon": -{BIG}}}'.encode(),
        f'{{"op": "set_level", "args": [100], "ttl_s": {BIG}}}'.encode(),
        f'{{"op": "set_level", "args": [100], "ttl_s": {HUGE}}}'.encode(),
        f'{{"op": "set_level", "args": [{BIG}]}}'.encode(),
        f'{{"type": "config", "settings": {{"report_interval": {BIG}}}}}'.encode(),
        b'{"op": "set_level", "args": [100], "ttl_s": 1e400}',
        b'{"kind": "lighting", "kind": "lamp", "root_key": "' + KEY.encode() + b'"}',  # duplicate keys
        b'{"op": "set_level", "op": "reboot"}',
        b'{"kind": "lighting", "root_key": "' + KEY.encode() + b'", "lat": NaN, "lon": Infinity}',
    ],
    ids=lambda b: b[:40].decode(errors="replace"),
)
def test_hostile_json_gets_the_documented_4xx_json_error(srv, method, path, body):
    status, headers, out = srv.request(method, path, body)
    assert_json_error(status, headers, out)


def test_a_400_digit_lat_is_refused_by_the_registry_itself():
    from gateway.registry import NodeEntry, RegistryError

    for field in ("lat", "lon"):
        doc = {"kind": "lighting", "root_key": KEY, "lat": 1, "lon": 1, field: int(BIG)}
        with pytest.raises(RegistryError, match=field):
            NodeEntry.from_dict(3, doc)


def test_an_unknown_method_gets_the_headers_and_json(srv):
    for request in (
        b"FOO /nodes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GE(T /nodes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /nodes HTTP/1.1\r\nHost: x\r\nBad Header: x\r\nConnection: close\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello on the HTTP port
    ):
        answer = srv.raw(request)
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        assert_json_error(status, headers, body)


def test_an_unexpected_failure_is_a_json_500_with_the_headers(srv, monkeypatch):
    def boom(*_a):
        raise RuntimeError("a bug")

    monkeypatch.setattr(srv.api, "_node_json", boom)
    status, headers, out = srv.request("GET", "/nodes/00000001")
    assert assert_json_error(status, headers, out, 500) == "internal error"
    assert b"RuntimeError" not in out and b"a bug" not in out


def test_405_413_and_404_carry_the_headers(srv):
    for method, path, body in (
        ("PATCH", "/nodes/00000001", b"{}"),
        ("PUT", "/nodes/00000001", b"[" + b"1," * 40_000 + b"1]"),
        ("GET", "/nope", None),
    ):
        status, headers, out = srv.request(method, path, body)
        assert_json_error(status, headers, out)


def test_the_token_is_accepted_only_in_its_exact_form(srv):
    def auth(value: bytes) -> int:
        answer = srv.raw(
            b"GET /nodes HTTP/1.1\r\nHost: x\r\nAuthorization: " + value + b"\r\nConnection: close\r\n\r\n"
        )
        return int(answer.split(b" ", 2)[1])

    good = b"Bearer " + TOKEN.encode()
    assert auth(good) == 200
    for bad in (
        good + b" ",
        good + b"\t",
        good + b"  ",
        b"bearer " + TOKEN.encode(),
        b"Bearer  " + TOKEN.encode(),
        b"Bearer " + TOKEN.encode()[:-1],
        b"Bearer " + TOKEN.encode() + b"x",
        TOKEN.encode(),
    ):
        assert auth(bad) == 401, bad
    # the connection that sent the bad form does not poison the next one
    assert auth(good) == 200


# -- fuzz: every endpoint, hostile structure ----------------------------------------------

ENDPOINTS = [
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/nodes"),
    ("GET", "/nodes/{id}"),
    ("GET", "/nodes/{id}/readings"),
    ("PUT", "/nodes/{id}"),
    ("DELETE", "/nodes/{id}"),
    ("POST", "/nodes/{id}/commands"),
    ("GET", "/nodes/{id}/commands"),
    ("GET", "/commands"),
    ("GET", "/commands/{cmd}"),
    ("DELETE", "/commands/{cmd}"),
    ("GET", "/quarantine"),
    ("GET", "/ops"),
    ("GET", "/ui/{name}"),
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=300, max_value=5000).map(lambda n: "9" * n),  # raw: huge integers
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["lighting", "set_level", "config", "time", "command", "report_interval", KEY]),
)
keys = st.sampled_from(
    ["kind", "root_key", "lat", "lon", "name", "site", "firmware", "op", "args", "ttl_s", "type", "settings", "x"]
)


def to_json(v) -> str:
    if isinstance(v, str) and v.startswith("999"):
        return v  # a raw huge integer
    if isinstance(v, list):
        return "[" + ",".join(to_json(x) for x in v) + "]"
    if isinstance(v, tuple):  # an object as key-value pairs: keys may repeat
        return "{" + ",".join(json.dumps(k) + ":" + to_json(x) for k, x in v) + "}"
    return json.dumps(v)


values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.lists(st.tuples(keys, inner), max_size=5).map(tuple)),
    max_leaves=12,
)
depth = st.integers(min_value=1, max_value=40_000)
bodies = st.one_of(
    values.map(to_json),
    st.tuples(depth, values.map(to_json)).map(lambda t: "[" * t[0] + t[1] + "]" * t[0]),
    st.tuples(depth, values.map(to_json)).map(lambda t: '{"op":' * t[0] + t[1] + "}" * t[0]),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
)
ids = st.one_of(
    st.sampled_from(["00000001", "00000002", "0x00000001", "00000009"]),
    st.text(alphabet="0123456789abcdefx-+ %.", max_size=12),
    st.integers(min_value=300, max_value=2000).map(lambda n: "9" * n),
)
queries = st.one_of(
    st.just(""),
    st.sampled_from(["limit", "state", "type"]).flatmap(
        lambda k: st.one_of(st.text(alphabet="0123456789-,.abcdefqueudsnt", max_size=12), st.just("9" * 5000)).map(
            lambda v: f"?{k}={v}"
        )
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(ENDPOINTS), node=ids, cmd=ids, body=bodies, query=queries)
def test_fuzz_every_endpoint_never_answers_500_and_always_locks_down(srv, endpoint, node, cmd, body, query):
    method, template = endpoint
    path = template.format(id=node, cmd=cmd, name=node) + query
    path = "/" + "/".join(p.replace(" ", "%20").replace("#", "%23").replace("?", "%3F") for p in path[1:].split("/"))
    if query:
        path = path.replace("%3F", "?", 1)
    payload = body.encode("utf-8", "surrogatepass") if method in ("PUT", "POST") else None
    status, headers, out = srv.request(method, path, payload)
    assert status < 500, (status, method, path, out[:300])
    for k, v in SECURITY_HEADERS.items():
        assert headers.get(k.lower()) == v
    if status >= 400:
        assert headers["content-type"].startswith("application/json")
        assert isinstance(json.loads(out)["error"], str)


def test_unparseable_requests_are_logged_at_a_bounded_rate(srv, monkeypatch):
    """aiohttp logged every request it could not parse, unlimited (a traceback on stderr each):
    a log flood from anyone who can reach the port. Now: the API's rate limiter."""

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.n = 0

        def emit(self, record: logging.LogRecord) -> None:
            self.n += 1

    lines = Lines()
    monkeypatch.setattr(api_module, "_HTTP_ERRORS", logs.RateLimiter())  # a budget of its own
    loggers = [logging.getLogger(n) for n in ("aiohttp.server", "aiohttp.access", "lumeau.gateway.api")]
    levels = [x.level for x in loggers]
    for x in loggers:
        x.addHandler(lines)
        x.setLevel(logging.DEBUG)
    try:
        for _ in range(3 * logs.LOG_BURST):
            srv.raw(b"GET /nodes HTTP/1.1\r\nHost: x\r\nBad Header: x\r\nConnection: close\r\n\r\n")
    finally:
        for x, level in zip(loggers, levels, strict=True):
            x.removeHandler(lines)
            x.setLevel(level)
    assert 1 <= lines.n <= logs.LOG_BURST, lines.n
