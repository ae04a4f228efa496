"""Idempotency across re-keying (issue 15, item 4; SPEC §4 "Record ids and key generations").

A re-keyed node starts its uplink counters again under the new key. Record ids were
`<node>-<counter>`, so the platform, which drops resends by id, dropped the new key's
records as duplicates of the old key's: silent data loss. Records now carry the node's
key generation (`<node>-g<gen>-<counter>` after a re-key).

End to end, all real: `lumeau node provision` writes the registry, frames go to a running
`lumeau gateway` as Semtech UDP datagrams, the gateway's upstream delivers to a running
`lumeau sink`; the re-key is `lumeau node provision --force`, picked up by the gateway's
registry watch. Then the parts: the store's migration of a database from before the
column, the registry's generation rule (upsert, a reload of a file whose key changed by
hand), the store's merging of copies within one generation only, and the formats.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gateway_helpers import LIGHT_BODY, GatewayProcess, push_data, reception, record
from hypothesis import given, settings
from hypothesis import strategies as st
from waiting import wait_for, wait_for_sync

from gateway import formats
from gateway.pipeline import ACCEPTED, ADMISSION_PATH, DUPLICATE, Pipeline
from gateway.registry import NodeEntry, Registry, RegistryError
from gateway.store import Store
from protocol import frame
from protocol import messages as m
from protocol.keys import NodeKeys

API_TOKEN = "rekey-api-token-0123456789"
SINK_TOKEN = "rekey-sink-token-0123456789"
NODE = 0x00C0FFEE
NEEDS_C = pytest.mark.skipif(ADMISSION_PATH != "compiled", reason="gateway._fastadmit is not built")
N = 12  # frames per key


def lumeau(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumeau", *args], capture_output=True, text=True, timeout=60)


def provision(registry: Path, out: Path, *, force: bool = False) -> bytes:
    """`lumeau node provision` of NODE into `registry`; returns the root key it wrote to `out`."""
    args = ["node", "provision", "--kind", "lighting", "--registry", str(registry), "--node-id", f"{NODE:08x}"]
    args += ["--out", str(out)]
    if force:
        args.append("--force")
    else:
        args.append("--new-registry")
    r = lumeau(*args)
    assert r.returncode == 0, r.stderr
    return bytes.fromhex(json.loads(out.read_text())["root_key"])


def light(key: bytes, counter: int) -> bytes:
    body = {**LIGHT_BODY, 2: 1000 + counter}
    return frame.seal(NodeKeys(NODE, key), m.LIGHT, counter, m.encode(m.LIGHT, body))


def start_sink(tmp: Path) -> tuple[subprocess.Popen, str]:
    tok = tmp / "sink.token"
    tok.write_text(SINK_TOKEN)
    tok.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lumeau", "sink", "--db", str(tmp / "sink.db"), "--port", "0", "--token-file", str(tok)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    mt = re.search(r"listening on (http://\S+)", line)
    assert mt, line
    return proc, mt.group(1).rstrip("/")


def get(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def sink_records(base: str) -> list[dict]:
    out, after = [], 0
    while True:
        doc = get(f"{base}/v1/records?limit=1000&after={after}", SINK_TOKEN)
        out += doc["records"]
        if not doc["records"]:
            return out
        after = doc["next"]


def test_a_rekeyed_node_loses_no_record_up_to_the_sink(tmp_path):
    reg = tmp_path / "nodes.toml"
    key_a = provision(reg, tmp_path / "node-a.json")
    sink, sink_url = start_sink(tmp_path)
    (tmp_path / "upstream.token").write_text(SINK_TOKEN)
    (tmp_path / "upstream.token").chmod(0o600)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
id = "rekey-e2e"
registry = "{reg}"
[log]
level = "info"
[api]
port = 0
token = "{API_TOKEN}"
[semtech]
enabled = true
host = "127.0.0.1"
port = 0
[upstream]
url = "{sink_url}/v1/records"
token_file = "upstream.token"
batch_max_records = 5
batch_max_age_s = 0.2
backoff_initial_s = 0.2
backoff_max_s = 1.0
""")
    gw = GatewayProcess(cfg)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        started = gw.start()
        udp = ("127.0.0.1", started["semtech_port"])
        api = f"http://127.0.0.1:{started['api_port']}"

        def send(key: bytes) -> None:
            for c in range(N):  # one datagram per frame, as a forwarder sends them one by one
                sock.sendto(push_data([light(key, c)], token=c + 1, tmst=1_000_000 + c * 1000), udp)

        def at_sink(n: int):
            def cond():
                recs = [r for r in sink_records(sink_url) if r["node"] == f"{NODE:08x}"]
                return recs if len(recs) >= n else None

            return cond

        send(key_a)
        first = wait_for_sync(at_sink(N), 30, f"the first key's {N} records at the sink")
        assert sorted(r["id"] for r in first) == sorted(f"{NODE:08x}-{c}" for c in range(N))  # ids as before

        # the re-key, as a technician does it: a new key in the registry file, the gateway running
        key_b = provision(reg, tmp_path / "node-b.json", force=True)
        assert key_b != key_a
        wait_for_sync(
            lambda: gw.logged("registry reloaded"),  # its count of re-keyed nodes is redacted ("key")
            30,
            "the gateway's reload of the re-keyed registry",
        )
        send(key_b)  # the node starts again at counter 0 under the new key
        try:
            recs = wait_for_sync(at_sink(2 * N), 30, f"all {2 * N} records at the sink")
        except AssertionError:
            got = sorted(r["id"] for r in sink_records(sink_url))
            stats = get(f"{sink_url}/v1/stats", SINK_TOKEN)
            raise AssertionError(f"records lost: the sink has {len(got)} ({stats['duplicates']} duplicates)") from None
        assert len(recs) == 2 * N
        ids = [r["id"] for r in recs]
        assert len(set(ids)) == 2 * N
        assert set(ids) == {f"{NODE:08x}-{c}" for c in range(N)} | {f"{NODE:08x}-g1-{c}" for c in range(N)}
        # each record is the frame it says: the new key's carry their generation and their own readings
        for r in recs:
            gen = r.get("key_gen", 0)
            assert r["id"] == (f"{NODE:08x}-{r['counter']}" if gen == 0 else f"{NODE:08x}-g1-{r['counter']}")
            assert r["fields"]["energy"] == 1000 + r["counter"]
        assert get(f"{sink_url}/v1/stats", SINK_TOKEN)["duplicates"] == 0

        node = get(f"{api}/nodes/{NODE:08x}", API_TOKEN)
        assert node["key_gen"] == 1 and "root_key" not in node
        assert key_b.hex() not in json.dumps(node) and key_a.hex() not in json.dumps(node)
        # the generation is in the registry file, so a restarted gateway gives the same ids
        assert Registry.load(reg).get(NODE).key_gen == 1
        # an old-key frame after the re-key is refused (bad MIC), never stored under either id
        sock.sendto(push_data([light(key_a, N + 5)], token=999), udp)
        wait_for_sync(lambda: bad_mic(metrics_text(api)) >= 1, 15, "the old key's frame refused")
        assert bad_mic(metrics_text(api)) == 1
        assert len(sink_records(sink_url)) == 2 * N
    finally:
        sock.close()
        gw.kill()
        sink.terminate()
        sink.wait(10)


def metrics_text(api: str) -> str:
    req = urllib.request.Request(f"{api}/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def bad_mic(text: str) -> int:
    return sum(
        int(float(v))
        for v in re.findall(r'^lumeau_frames_rejected_total\{[^}]*reason="bad_mic"[^}]*\} (\S+)$', text, re.M)
    )


# ---------------------------------------------------------------- the registry's generation rule


def key(n: int) -> bytes:
    return bytes([n]) * 16


def test_upsert_gives_a_new_key_the_next_generation_and_keeps_it_for_the_same_key(tmp_path):
    reg = Registry(tmp_path / "nodes.toml")
    reg.upsert(NodeEntry(NODE, "lighting", key(1)))
    assert reg.get(NODE).key_gen == 0
    reg.upsert(NodeEntry(NODE, "lighting", key(2)))
    assert reg.get(NODE).key_gen == 1
    reg.upsert(NodeEntry(NODE, "lighting", key(2), name="renamed"))  # same key: same generation
    assert reg.get(NODE).key_gen == 1
    reg.upsert(NodeEntry(NODE, "lighting", key(3)))
    assert reg.get(NODE).key_gen == 2
    reg.save()
    text = (tmp_path / "nodes.toml").read_text()
    assert "key_gen = 2" in text
    assert Registry.load(tmp_path / "nodes.toml").get(NODE).key_gen == 2
    assert reg.get(NODE).public()["key_gen"] == 2 and "root_key" not in reg.get(NODE).public()


def test_an_id_removed_and_registered_again_continues_its_generations(tmp_path):
    """Its counters start at 0 again too: generation 0 would give it the old records' ids."""
    p = tmp_path / "nodes.toml"
    reg = Registry(p)
    reg.upsert(NodeEntry(NODE, "lighting", key(1)))
    reg.upsert(NodeEntry(NODE, "lighting", key(2)))  # generation 1
    reg.save()
    # removed through the lock, as `lumeau node remove` and the API's DELETE do
    gone, _ = reg.change(lambda r: r.remove(NODE), missing_ok=False)
    assert gone is not None and NODE not in reg
    text = p.read_text()
    assert "[retired]" in text and f"{NODE:08x} = 2" in text
    # registered again later (another process: what is in the file)
    again = Registry.load(p)
    again.change(lambda r: r.upsert(NodeEntry(NODE, "irrigation", key(3))), missing_ok=False)
    assert again.get(NODE).key_gen == 2
    after = Registry.load(p)
    assert after.get(NODE).key_gen == 2 and "[retired]" not in p.read_text()
    # a node never registered before starts at 0
    after.change(lambda r: r.upsert(NodeEntry(NODE + 1, "lighting", key(4))), missing_ok=False)
    assert Registry.load(p).get(NODE + 1).key_gen == 0


def test_an_id_added_back_by_hand_takes_its_retired_generation_on_reload(tmp_path):
    p = tmp_path / "nodes.toml"
    running = Registry(p)
    running.upsert(NodeEntry(NODE, "lighting", key(1)))
    running.save()
    running.change(lambda r: r.remove(NODE), missing_ok=False)
    # the file rewritten by a hand (or an older tool) that knows nothing of [retired]
    hand = Registry(p)
    hand.upsert(NodeEntry(NODE, "lighting", key(2)))
    hand.save()
    assert "retired" not in p.read_text() and "key_gen" not in p.read_text()
    _, rekeyed = running.change(lambda r: None, missing_ok=False)
    assert rekeyed == [] and running.get(NODE).key_gen == 1
    assert Registry.load(p).get(NODE).key_gen == 1


@pytest.mark.parametrize(
    "table, message",
    [
        ("retired = 3", "retired: must be a table"),
        ("[retired]\nzz = 1", "retired.zz: node id 'zz' is not 1 to 8 hex digits"),
        ("[retired]\n00c0ffee = 0", "retired.00c0ffee: must be a key generation 1..4294967295"),
        ('[retired]\n00c0ffee = "1"', "retired.00c0ffee: must be a key generation"),
    ],
)
def test_a_bad_retired_table_is_refused_naming_it(tmp_path, table, message):
    p = tmp_path / "nodes.toml"
    p.write_text("version = 1\n" + table + "\n")
    p.chmod(0o600)
    with pytest.raises(RegistryError, match=re.escape(f"{p}: {message}")):
        Registry.load(p)


def test_a_node_never_rekeyed_has_no_generation_in_the_file(tmp_path):
    reg = Registry(tmp_path / "nodes.toml")
    reg.upsert(NodeEntry(NODE, "lighting", key(1)))
    reg.save()
    assert "key_gen" not in (tmp_path / "nodes.toml").read_text()  # files as before generations
    assert reg.get(NODE).public()["key_gen"] == 0


@pytest.mark.parametrize("bad", [-1, 2**32, True, "1", 1.0])
def test_a_bad_generation_in_the_file_is_refused_naming_node_and_key(tmp_path, bad):
    p = tmp_path / "nodes.toml"
    reg = Registry(p)
    reg.upsert(NodeEntry(NODE, "lighting", key(1)))
    reg.save()
    text = p.read_text()
    value = json.dumps(bad) if not isinstance(bad, bool) else "true"
    p.write_text(text.replace('kind = "lighting"', f'kind = "lighting"\nkey_gen = {value}'))
    with pytest.raises(RegistryError, match=re.escape(f"{p}: nodes.{NODE:08x}: key_gen: must be an integer")):
        Registry.load(p)


def test_a_key_changed_in_the_file_by_hand_is_bumped_on_reload(tmp_path):
    p = tmp_path / "nodes.toml"
    running = Registry(p)
    running.upsert(NodeEntry(NODE, "lighting", key(1)))
    running.upsert(NodeEntry(NODE + 1, "lighting", key(9)))
    running.save()
    running = Registry.load(p)
    # an edit by hand: a new key, the generation left as it was (absent: 0)
    p.write_text(p.read_text().replace(key(1).hex(), key(2).hex()))
    fresh = Registry.load(p)
    assert fresh.get(NODE).key_gen == 0
    assert running.replace_all(fresh) == [NODE]
    assert running.get(NODE).key_gen == 1 and running.get(NODE + 1).key_gen == 0
    # through the lock (what the gateway does on such a reload): the bump is written to the file
    p.write_text(p.read_text().replace(key(2).hex(), key(3).hex()))  # file: key 3, no key_gen
    _, rekeyed = running.change(lambda reg: None, missing_ok=False)
    assert rekeyed == [NODE]
    assert running.get(NODE).key_gen == 2
    assert Registry.load(p).get(NODE).key_gen == 2
    # the same key never goes back to a lower generation
    p.write_text(p.read_text().replace("key_gen = 2", "key_gen = 0"))
    assert running.replace_all(Registry.load(p)) == []
    assert running.get(NODE).key_gen == 2


def test_the_gateway_writes_back_the_bump_of_a_key_changed_by_hand(tmp_path):
    """The running gateway reloads a file whose key changed without a bump: the bump goes to
    the file, so a restart gives the new key's records the same ids."""
    p = tmp_path / "nodes.toml"
    reg = Registry(p)
    reg.upsert(NodeEntry(NODE, "lighting", key(1)))
    reg.save()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
id = "rekey-reload"
registry = "{p}"
[api]
port = 0
token = "{API_TOKEN}"
[upstream]
enabled = false
""")
    gw = GatewayProcess(cfg)
    try:
        api = f"http://127.0.0.1:{gw.start()['api_port']}"
        assert get(f"{api}/nodes/{NODE:08x}", API_TOKEN)["key_gen"] == 0
        text = p.read_text().replace(key(1).hex(), key(2).hex())
        tmp = p.with_name("edit.tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        os.replace(tmp, p)
        wait_for_sync(lambda: get(f"{api}/nodes/{NODE:08x}", API_TOKEN)["key_gen"] == 1, 30, "the bump")
        wait_for_sync(lambda: Registry.load(p).get(NODE).key_gen == 1, 30, "the bump in the file")
        assert Registry.load(p).get(NODE).root_key == key(2)
        # and an API client cannot set it
        req = urllib.request.Request(
            f"{api}/nodes/{NODE:08x}",
            data=json.dumps({"key_gen": 0}).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400 and "key_gen" in json.loads(e.value.read())["error"]
        assert get(f"{api}/nodes/{NODE:08x}", API_TOKEN)["key_gen"] == 1
        # removed and added again through the API: the id goes on from its last generation
        assert call(api, "DELETE", f"/nodes/{NODE:08x}") == 204
        assert call(api, "PUT", f"/nodes/{NODE:08x}", {"kind": "lighting", "root_key": key(5).hex()}) == 201
        assert get(f"{api}/nodes/{NODE:08x}", API_TOKEN)["key_gen"] == 2
        assert Registry.load(p).get(NODE).key_gen == 2
    finally:
        gw.kill()


def call(api: str, method: str, path: str, doc: dict | None = None) -> int:
    req = urllib.request.Request(
        f"{api}{path}",
        data=None if doc is None else json.dumps(doc).encode(),
        method=method,
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


# ---------------------------------------------------------------- the store


OLD_SCHEMA = """
CREATE TABLE records (
    seq INTEGER PRIMARY KEY, node_id INTEGER NOT NULL, counter INTEGER NOT NULL, mtype INTEGER NOT NULL,
    prio INTEGER NOT NULL, rx_time REAL NOT NULL, receptions INTEGER NOT NULL, best_rssi REAL, best_snr REAL,
    gateway_id TEXT NOT NULL, body BLOB NOT NULL
);
CREATE TABLE quarantine (
    seq INTEGER PRIMARY KEY, batch INTEGER NOT NULL, node_id INTEGER NOT NULL, counter INTEGER NOT NULL,
    mtype INTEGER NOT NULL, prio INTEGER NOT NULL, rx_time REAL NOT NULL, receptions INTEGER NOT NULL,
    best_rssi REAL, best_snr REAL, gateway_id TEXT NOT NULL, body BLOB NOT NULL
);
"""


async def test_a_database_from_before_generations_is_migrated_and_keeps_its_records(tmp_path):
    import cbor2

    path = tmp_path / "gateway.db"
    c = sqlite3.connect(path)
    c.executescript(OLD_SCHEMA)
    body = cbor2.dumps(m.validate(m.LIGHT, dict(LIGHT_BODY)))
    c.executemany(
        "INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [(s, NODE, s - 1, m.LIGHT, 0, 1.7e9 + s, 1, -90.0, 7.5, "udp:x", body) for s in (1, 2, 3)],
    )
    c.execute(
        "INSERT INTO quarantine VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (9, 1, NODE, 7, m.LIGHT, 0, 1.7e9, 1, None, None, "g", body),
    )
    c.commit()
    c.close()
    path.chmod(0o600)

    store = await Store.open(path)
    try:
        got = store.next_batch(10)
        assert [(s, r.counter, r.key_gen, r.idempotency_key) for s, r in got] == [
            (1, 0, 0, f"{NODE:08x}-0"),
            (2, 1, 0, f"{NODE:08x}-1"),
            (3, 2, 0, f"{NODE:08x}-2"),
        ]
        assert store.quarantine_count() == 1
        # new records keep their generation next to the old ones
        r = record(NODE, 0)
        r.key_gen = 3
        seq = await store.append(r)
        assert seq == 10  # after the quarantine's highest seq, as before
    finally:
        await store.close()
    store = await Store.open(path)  # reopened: the migration is done once, the records read back
    try:
        got = {s: r for s, r in store.next_batch(10)}
        assert got[10].key_gen == 3 and got[10].idempotency_key == f"{NODE:08x}-g3-0"
        assert got[1].key_gen == 0
        await store.quarantine([10], 422, "refused")
        q = [r for b in store.quarantined() for _s, r in b["records"]]
        assert {(r.counter, r.key_gen) for r in q} == {(7, 0), (0, 3)}
    finally:
        await store.close()
    cols = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(records)")]
    assert cols.count("key_gen") == 1


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=NEEDS_C)])
async def test_a_copy_under_the_new_key_never_merges_into_the_old_keys_record(tmp_path, compiled):
    """Two radios hear counter 5 of the old key, then (after the re-key) counter 5 of the new
    key: two records, each with its own receptions and generation, on both admission paths."""
    reg = Registry(tmp_path / "nodes.toml")
    reg.upsert(NodeEntry(NODE, "lighting", key(1)))
    store = await Store.open(tmp_path / "gateway.db")
    pipe = Pipeline(reg, store, compiled=compiled)
    try:

        def sealed(k: bytes, c: int) -> bytes:
            return frame.seal(NodeKeys(NODE, k), m.LIGHT, c, m.encode(m.LIGHT, LIGHT_BODY))

        old = sealed(key(1), 5)
        assert await pipe.ingest(reception(old, "gw:a", rssi=-100.0)) == ACCEPTED
        assert await pipe.ingest(reception(old, "gw:b", rssi=-80.0)) == DUPLICATE
        _, rekeyed = reg.change(lambda r: r.upsert(NodeEntry(NODE, "lighting", key(2))))
        assert rekeyed == [NODE] and reg.get(NODE).key_gen == 1
        await pipe.reset_nodes(rekeyed)
        new = sealed(key(2), 5)
        assert await pipe.ingest(reception(new, "gw:a", rssi=-90.0)) == ACCEPTED
        assert await pipe.ingest(reception(new, "gw:c", rssi=-70.0)) == DUPLICATE
        assert await pipe.ingest(reception(old, "gw:b")) == "bad_mic"  # the old key's copy: refused
        recs = [r for _s, r in store.next_batch(10)]
        assert [(r.idempotency_key, r.receptions, r.gateway_id) for r in recs] == [
            (f"{NODE:08x}-5", 2, "gw:b"),
            (f"{NODE:08x}-g1-5", 2, "gw:c"),
        ]
        assert [r.key_gen for r in recs] == [0, 1]
        assert pipe.admission_path == ("compiled" if compiled else "python")
    finally:
        await pipe.close()
        await store.close()


async def test_the_store_does_not_merge_across_generations_even_before_the_reset(tmp_path):
    store = await Store.open(tmp_path / "gateway.db")
    try:
        r = record(NODE, 5)
        await store.append(r)
        assert not store.add_reception(NODE, 5, -50.0, 9.0, "gw:z", key_gen=1)  # another key's frame 5
        assert store.add_reception(NODE, 5, -50.0, 9.0, "gw:z", key_gen=0)
        await wait_for(lambda: store.next_batch(1)[0][1].receptions == 2, 5, "the merge")
    finally:
        await store.close()


# ---------------------------------------------------------------- the formats


def _rec(counter: int, gen: int):
    r = record(NODE, counter)
    r.key_gen = gen
    return r


@pytest.mark.parametrize("version", [2, 3])
def test_both_native_formats_carry_the_generation_and_the_receiver_rebuilds_the_id(version):
    recs = [_rec(4, 0), _rec(4, 1), _rec(4, 12)]
    doc = json.loads(formats.native_encoder(version)(recs))
    got = formats.check_native_batch(doc)
    assert [n.key for n in got] == [f"{NODE:08x}-4", f"{NODE:08x}-g1-4", f"{NODE:08x}-g12-4"]
    assert [n.doc["id"] for n in got] == [r.idempotency_key for r in recs]
    assert [n.doc.get("key_gen", 0) for n in got] == [0, 1, 12]


@pytest.mark.parametrize("version", [2, 3])
def test_a_batch_without_rekeyed_nodes_is_as_before(version):
    recs = [_rec(c, 0) for c in range(3)]
    raw = formats.native_encoder(version)(recs)
    assert b"key_gen" not in raw
    if version == 3:
        assert json.loads(raw)["columns"] == list(formats.V3_COLUMNS)


@pytest.mark.parametrize(
    "gen, id_, message",
    [
        (1, None, "is not node-g<key_gen>-counter"),
        (0, "g1", "is not node-counter"),
        (-1, None, "key_gen: must be an integer"),
        (True, None, "key_gen: must be an integer"),
        (2**32, None, "key_gen: must be an integer"),
        ("1", None, "key_gen: must be an integer"),
    ],
)
def test_the_receiver_refuses_an_id_that_does_not_match_its_generation(gen, id_, message):
    doc = json.loads(formats.native_batch([_rec(4, 0)]))
    r = doc["records"][0]
    r["key_gen"] = gen
    if id_ == "g1":
        r["id"] = f"{NODE:08x}-g1-4"
    with pytest.raises(formats.FormatError, match=re.escape(message)):
        formats.check_native_batch(doc)


@pytest.mark.parametrize("gen", [-1, True, 2**32, "1", None, 1.5])
def test_the_v3_receiver_refuses_a_bad_generation_column(gen):
    doc = json.loads(formats.native_batch_v3([_rec(4, 1)]))
    doc["records"][0][-1] = gen
    with pytest.raises(formats.FormatError, match=r"records\[0\]\.key_gen: must be an integer"):
        formats.check_native_batch(doc)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(gen=_json, id_=st.one_of(st.none(), st.text(max_size=40)), version=st.sampled_from([2, 3]))
def test_any_generation_from_the_network_is_a_record_with_its_id_or_a_format_error(gen, id_, version):
    doc = json.loads(formats.native_encoder(version)([_rec(4, 1)]))
    if version == 3:
        doc["records"][0][-1] = gen
    else:
        doc["records"][0]["key_gen"] = gen
        if id_ is not None:
            doc["records"][0]["id"] = id_
    try:
        got = formats.check_native_batch(doc)
    except formats.FormatError:
        return
    (n,) = got
    assert type(gen) is int and 0 <= gen <= formats.MAX_KEY_GEN
    assert n.key == n.doc["id"] == formats.idempotency_key(f"{NODE:08x}", gen, 4)
