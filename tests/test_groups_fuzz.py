"""The /groups endpoints under hostile input (hypothesis): never a 5xx, always a JSON error,
and the registry file stays loadable whatever was sent."""

from __future__ import annotations

import json
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hardening_api import Server

from gateway.registry import Registry

ENDPOINTS = [
    ("GET", "/groups"),
    ("POST", "/groups"),
    ("GET", "/groups/{name}"),
    ("PUT", "/groups/{name}"),
    ("DELETE", "/groups/{name}"),
    ("POST", "/groups/{name}/commands"),
    ("GET", "/groups/{name}/commands"),
    ("GET", "/groups/{name}/commands/{cmd}"),
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("groups"))
    status, _, out = s.request("PUT", "/groups/g1", json.dumps({"kind": "street", "members": ["1", "2"]}).encode())
    assert status == 201, out
    yield s
    s.close()


names = st.one_of(
    st.sampled_from(["g1", "g2", "street-1", "x_y"]),
    st.text(alphabet="abcXYZ019-_.%+ é", max_size=70),
    st.just("a" * 65),
)
cmds = st.one_of(st.integers(min_value=-5, max_value=10).map(str), st.text(alphabet="0123456789x-", max_size=25))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["00000001", "00000002", "0x2", "ffffffff", "street", "park", "set_level", "rain_delay", "reboot"]),
)
keys = st.sampled_from(["name", "kind", "members", "title", "op", "args", "ttl_s", "level", "duration", "hours", "x"])
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=14,
)
bodies = st.one_of(
    values.map(json.dumps),
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["street", "park", "district", "custom", "avenue"]), "members": values}
    ).map(json.dumps),
    st.fixed_dictionaries(
        {"op": st.sampled_from(["set_level", "set_profile", "rain_delay", "open_zone"]), "args": values}
    ).map(json.dumps),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(ENDPOINTS), name=names, cmd=cmds, body=bodies)
def test_fuzz_group_endpoints_never_answer_5xx(srv, endpoint, name, cmd, body):
    method, template = endpoint
    quoted = urllib.parse.quote(name, safe="")
    path = template.format(name=quoted or "%20", cmd=cmd or "0")
    payload = body.encode("utf-8", "surrogatepass") if method in ("PUT", "POST") else None
    status, headers, out = srv.request(method, path, payload)
    assert status < 500, (status, method, path, body[:200], out[:300])
    if status >= 400:
        assert headers["content-type"].startswith("application/json")
        assert isinstance(json.loads(out)["error"], str)
    Registry.load(srv.api.registry.path)  # whatever was accepted, the file still loads
