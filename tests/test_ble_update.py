"""`lumeau node update IMAGE --ble ADDR` end to end: the CLI on bleak (its backend seam, tests/ble_sim.py)
against a node running under real MicroPython from .mpy files (tests/ble_update_bridge.py): the image
goes over in tagged chunks, a lost link resumes from the node's offset, the node's own updater
installs it or refuses it with its text, and nothing changes on a refusal. The node's side alone is
tests/micropython/mp_bleupd.py; the chunk parser's fuzzing is here (CPython, the same module)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from ble_sim import Air
from ble_update_bridge import RemoteStack, build_job, problem
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_lighting import CFG as LIGHT_CFG

from firmware import bleupd
from lumeau.cli import build_parser
from lumeau.commands import node_release
from lumeau.update import describe
from protocol import ble as pb
from protocol.keys import NodeKeys

NODE_ID = 0x00A1B2C3
KEY = bytes(range(16))  # tests/micropython/mpnode.py ROOT_HEX


def _vectors() -> Any:
    spec = importlib.util.spec_from_file_location(
        "lumeau_tests_release_vectors", ROOT / "tests" / "micropython" / "release_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


V = _vectors()


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = problem()
    if why:
        pytest.fail(why)
    return build_job(tmp_path_factory.mktemp("bridge"))


@pytest.fixture
def board(job: Path):
    stack = RemoteStack(job)
    stack.boot(json.dumps({"kind": "lighting", "release_key": V.PUB.hex()}))
    yield stack
    stack.close()


def tool_config(tmp: Path, key: bytes = KEY) -> Path:
    """The node's config file as `lumeau node provision` writes it: the tool takes the key from it."""
    doc = {"node_id": NODE_ID, "kind": "lighting", "root_key": key.hex(), "key_fresh": True, **LIGHT_CFG}
    doc["ble"] = {"enabled": True}
    p = tmp / f"config-{key.hex()[:4]}.json"
    p.write_text(json.dumps(doc))
    os.chmod(p, 0o600)
    return p


def run_cli(air: Air, *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(["node", "update", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = asyncio.run(node_release.update_ble_command(args, out, err, air.backends))
    return code, out.getvalue(), err.getvalue()


def image(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / f"{name}.lup"
    p.write_bytes(data)
    return p


def test_the_cli_updates_a_micropython_node_and_resumes_after_a_lost_link(board: RemoteStack, tmp_path: Path):
    air = Air()
    air.add(board, mtu=23)  # the default ATT MTU: 20-byte write pieces
    board.drop_at_write = 20  # inside the second chunk
    img = image(tmp_path, "full", V.FULL_011)
    code, out, err = run_cli(air, str(img), "--ble", "00a1b2c3", "--config", str(tool_config(tmp_path)))
    assert code == 0, (out, err, board.stderr())
    assert "link lost" in out and "reconnecting (1 of 5)" in out
    resumed = [line for line in out.splitlines() if "resuming at" in line]
    assert len(resumed) == 1 and " 240 of " in resumed[0], out  # one whole chunk kept across the drop
    assert "node 00a1b2c3: 0.1.1 installed on trial" in out
    for _ in range(20):  # the node resets into the trial once its answer is out (its time: 0.5 s a tick)
        board.call(op="tick", ms=500)
        s = board.state()
        if s["resets"]:
            break
    assert s["resets"] == 1
    assert s["ab"]["t"] == "s0" and s["ab"]["v"]["s0"] == "0.1.1", s
    assert "/board/ble.lup" not in s["files"] and "/board/s0/relapp/ver.mpy" in s["files"], s


def test_json_output_and_a_larger_mtu(board: RemoteStack, tmp_path: Path):
    air = Air()
    air.add(board, mtu=247)
    img = image(tmp_path, "delta", V.DELTA_011)
    code, out, err = run_cli(
        air, str(img), "--ble", "C0:FF:EE:00:00:01", "--config", str(tool_config(tmp_path)), "--json"
    )
    assert code == 0, (out, err)
    doc = json.loads(out)
    assert doc["node"] == "00a1b2c3" and doc["version"] == "0.1.1" and doc["size"] == len(V.DELTA_011)
    assert doc["sent_bytes"] == len(V.DELTA_011) and doc["resumed_at"] == [] and doc["reconnects"] == 0
    assert doc["bundle"] == describe(V.DELTA_011)["bundle"]
    assert board.state()["ab"]["v"]["s0"] == "0.1.1"


@pytest.mark.parametrize(
    "name, text",
    [
        ("OTHER_KEY", "bad signature (not signed by this city's release key)"),
        ("WRONG_TARGET", "release is for rp2 boards, this board is esp32"),
        ("DOWNGRADE", "downgrade or same version refused"),
        ("LYING_HASH", "does not match its hash in the manifest"),
        ("PADDED", "its manifest says 666 (truncated or padded)"),  # signed, then bytes added
    ],
)
def test_a_bad_release_is_refused_with_the_node_text_and_nothing_changes(
    board: RemoteStack, tmp_path: Path, name: str, text: str
):
    air = Air()
    air.add(board)
    before = board.state()
    data = V.FULL_011 + bytes(300) if name == "PADDED" else getattr(V, name)
    img = image(tmp_path, name, data)
    code, out, err = run_cli(air, str(img), "--ble", "00a1b2c3", "--config", str(tool_config(tmp_path)))
    assert code == 1, (out, err)
    assert "node 00a1b2c3 refused the release: " in err and text in err and "[refused]" in err, err
    after = board.state()
    assert after["files"] == before["files"] and after["ab"] is None and after["resets"] == 0, after


def test_the_wrong_key_sends_nothing_and_unknown_devices_are_not_found(board: RemoteStack, tmp_path: Path):
    air = Air()
    air.add(board)
    img = image(tmp_path, "full", V.FULL_011)
    code, out, err = run_cli(air, str(img), "--ble", "00a1b2c3", "--config", str(tool_config(tmp_path, bytes(16))))
    assert code == 1 and "[auth]" in err and "nothing was sent" in err, err
    assert not [f for f in board.state()["files"] if "ble.l" in f]  # no update message reached it
    code, out, err = run_cli(
        air, str(img), "--ble", "C0:FF:EE:99:99:99", "--config", str(tool_config(tmp_path)), "--timeout", "1"
    )
    assert code == 1 and "no Lumeau node with address C0:FF:EE:99:99:99" in err and "[not_found]" in err, err
    junk = image(tmp_path, "junk", b"not a release")
    code, out, err = run_cli(air, str(junk), "--ble", "00a1b2c3", "--config", str(tool_config(tmp_path)))
    assert code == 1 and "[bad_image]" in err, err


# -- the node's chunk parser against hostile input (CPython: the same module) ---------------------------


class _Node:
    def __init__(self) -> None:
        self.keys = NodeKeys(NODE_ID, KEY)
        self.last_error = ""
        self.hal = None


class _Commissioning:
    def __init__(self, root: str) -> None:
        self.node = _Node()
        self.refused = 0
        self.fs = root


SESSION = bytes(range(16))
_messages = st.one_of(
    st.binary(max_size=300),  # anything at all
    st.tuples(  # well tagged, hostile inside: any op, offset and data
        st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=pb.UPDATE_CHUNK_MAX + 20)
    ).map(lambda t: _tagged(t[0], t[1], t[2])),
)


def _tagged(op: int, off: int, data: bytes) -> bytes:
    m = bytes((pb.UPDATE, op)) + off.to_bytes(4, "big") + data
    return m + pb.update_tag(NodeKeys(NODE_ID, KEY), m, SESSION)


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("fuzzroot")
    (d / "config.json").write_text(json.dumps({"kind": "lighting", "release_key": V.PUB.hex()}))
    return str(d) + "/"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_messages, min_size=1, max_size=8), st.sampled_from([None, SESSION]))
def test_fuzz_the_node_answers_any_update_message_and_never_crashes(fuzz_root: str, msgs: list[bytes], sess: Any):
    c = _Commissioning(fuzz_root)
    keys = NodeKeys(NODE_ID, KEY)
    for raw in msgs:
        a = bleupd.handle(c, bytes((pb.UPDATE,)) + raw[1:] if raw else bytes((pb.UPDATE,)), sess)
        assert a[0] == pb.UPDATE and a[1] in (pb.U_HELD, pb.U_REFUSED), a
        assert len(a) <= pb.UPDATE_HEAD + pb.UPDATE_TEXT_MAX + pb.TAG_LEN
        assert a[-pb.TAG_LEN :] == pb.tag(keys, a[: -pb.TAG_LEN], sess or bytes(16))
        held = os.path.getsize(fuzz_root + "ble.lup") if os.path.exists(fuzz_root + "ble.lup") else 0
        if a[1] == pb.U_HELD:
            assert int.from_bytes(a[2:6], "big") == held  # what it says it holds is on flash
        if os.path.exists(fuzz_root + "ble.lid"):
            ident = Path(fuzz_root + "ble.lid").read_bytes()
            assert len(ident) == 36 and held <= int.from_bytes(ident[:4], "big")


def test_the_update_example_of_the_spec_is_what_node_and_tool_compute(tmp_path: Path):
    from ble_site import spec_examples, unhex

    ex = spec_examples("ble-update")[0]
    keys = NodeKeys(int(ex["node_id"], 0), unhex(ex["root_key"]))
    assert keys.node_id == NODE_ID
    sess = unhex(ex["session"])
    (tmp_path / "config.json").write_text(json.dumps({"kind": "lighting", "release_key": V.PUB.hex()}))
    c = _Commissioning(str(tmp_path) + "/")
    c.node.keys = keys
    img = b"LUP1"
    begin = bytes((pb.UPDATE, pb.U_BEGIN)) + len(img).to_bytes(4, "big") + hashlib.sha256(img).digest()
    assert unhex(ex["begin"]) == begin + pb.update_tag(keys, begin, sess)
    chunk = bytes((pb.UPDATE, pb.U_CHUNK)) + bytes(4) + img
    assert unhex(ex["chunk"]) == chunk + pb.update_tag(keys, chunk, sess)
    assert bleupd.handle(c, unhex(ex["begin"]), sess) == unhex(ex["held"])
    assert bleupd.handle(c, unhex(ex["chunk"]), sess) == unhex(ex["held_after"])
    assert (tmp_path / "ble.lup").read_bytes() == img


def test_a_lost_link_without_reconnects_resumes_when_the_command_runs_again(board: RemoteStack, tmp_path: Path):
    air = Air()
    air.add(board, mtu=23)
    board.drop_at_write = 20
    img = image(tmp_path, "full", V.FULL_011)
    cfg = str(tool_config(tmp_path))
    code, out, err = run_cli(air, str(img), "--ble", "00a1b2c3", "--config", cfg, "--reconnects", "0")
    assert code == 1 and "keeps the 240 bytes it holds: run the command again to resume" in err, (out, err)
    assert [f for f in board.state()["files"] if f.endswith("ble.lup")]  # kept on the node's flash
    code, out, err = run_cli(air, str(img), "--ble", "00a1b2c3", "--config", cfg, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["resumed_at"] == [240] and doc["sent_bytes"] == len(V.FULL_011) - 240 and doc["version"] == "0.1.1"
