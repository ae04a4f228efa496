"""`lumeau node expect` against a real gateway API: a signed image's release becomes what the
gateway expects of a node or a group, and the node's HELLO through the real pipeline then
says whether it runs it."""

from __future__ import annotations

import json

import pytest
from gateway_helpers import reception, seal
from test_hardening_api import TOKEN, Server

from lumeau import bundle as bundles
from lumeau import release as releases
from lumeau.cli import main as lumeau_main
from protocol import messages as m


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    bundles.build("lighting", "esp32", d / "b")
    bundle = bundles.load(d / "b")
    releases.generate_key(d / "release.pem")
    r = releases.build(bundle, releases.load_key(d / "release.pem"), ["0.0.1"], None, "9.9.0")
    path = d / "fix.lup"
    path.write_bytes(r.image)
    return path, r.manifest


@pytest.fixture
def srv(tmp_path, monkeypatch):
    monkeypatch.setenv("LUMEAU_API_TOKEN", TOKEN)
    s = Server(tmp_path)
    yield s
    s.close()


def expect(srv, *args: str) -> int:
    return lumeau_main(["node", "expect", *args, "--gateway", f"http://127.0.0.1:{srv.api.port}"])


def release_of(srv, node: str) -> dict:
    status, _, out = srv.request("GET", f"/nodes/{node}")
    assert status == 200
    return json.loads(out)["release"]


def hello(srv, node_id: int, counter: int, bundle_hex: str) -> None:
    body = {m.H_FIRMWARE: "9.9.0", m.H_KIND: m.KIND_LIGHTING, m.H_BUNDLE: bytes.fromhex(bundle_hex[:6])}
    assert srv.run(srv.api.pipeline.ingest(reception(seal(node_id, counter, m.HELLO, body)))) == "accepted"


def test_expect_from_an_image_then_the_node_says_hello(srv, image, capsys):
    path, manifest = image
    assert expect(srv, "00000001", "--image", str(path)) == 0
    assert "expected on 9.9.0" in capsys.readouterr().out
    rel = release_of(srv, "00000001")
    assert rel["expected"] == {"version": "9.9.0", "bundle": manifest["bundle"]} and rel["state"] == "updating"
    hello(srv, 1, 0, manifest["bundle"])
    assert release_of(srv, "00000001")["state"] == "current"
    hello(srv, 1, 1, "abcdef")
    assert release_of(srv, "00000001")["state"] == "rolled_back"
    lumeau_main(["node", "show", "00000001", "--gateway", f"http://127.0.0.1:{srv.api.port}"])
    assert "runs bundle abcdef, expected 9.9.0" in capsys.readouterr().out
    assert expect(srv, "1", "--clear") == 0
    assert release_of(srv, "00000001")["state"] is None


def test_expect_for_a_group_with_version_and_bundle(srv, capsys):
    status, _, out = srv.request("PUT", "/groups/quai", json.dumps({"kind": "street", "members": ["1", "2"]}).encode())
    assert status == 201, out
    bundle = "12" * 32
    assert expect(srv, "--group", "quai", "--version", "1.2.3", "--bundle", bundle.upper()) == 0
    out = capsys.readouterr().out
    assert "00000001  updating" in out and "00000002  updating" in out
    assert release_of(srv, "00000002")["expected"] == {"version": "1.2.3", "bundle": bundle}


def test_expect_refusals_say_what_to_give(srv, tmp_path, capsys):
    junk = tmp_path / "junk.lup"
    junk.write_bytes(b"not an image at all")
    for args, why in [
        (("00000001",), "--image FILE, or --version V with --bundle HEX"),
        (("00000001", "--version", "1.0.0"), "--image FILE, or --version V with --bundle HEX"),
        (("--version", "1.0.0", "--bundle", "12" * 32), "a node ID or --group NAME"),
        (("00000001", "--image", str(junk)), "not a usable release image"),
        (("00000001", "--image", str(tmp_path / "missing.lup")), "missing.lup"),
        (("00000001", "--version", "one", "--bundle", "12" * 32), "version: dotted numbers"),
        (("00000009", "--version", "1.0.0", "--bundle", "12" * 32), "404"),
        (("--group", "nosuch", "--version", "1.0.0", "--bundle", "12" * 32), "404"),
    ]:
        assert expect(srv, *args) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("lumeau node expect: ") and why in err, (args, err)
    assert release_of(srv, "00000001") is None
