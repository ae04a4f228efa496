"""End to end, all real: nodes on a pseudo-terminal -> `lumeau gateway` (killed with SIGKILL mid-burst,
restarted) -> `lumeau sink`. Every alarm the gateway acknowledged is in the sink exactly once, in order.

The nodes are wired (serial transport, SPEC §8 framing on a real pty) and send confirmed alarms. The
gateway's ACK of an alarm is its promise that the alarm is stored (gateway/downlinks.py sends it only
after the commit), so the ACKs the "nodes" read back are exactly the frames the gateway acknowledged.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tty
import urllib.request

from gateway_helpers import GatewayProcess, node_keys, registry, seal
from waiting import wait_for_sync

from protocol import frame
from protocol import messages as m
from protocol import serial as framing

NODES = (1, 2, 3, 4)
TOKEN = "e2e-api-token-0123456789"
SINK_TOKEN = "e2e-sink-token-0123456789"


def alarm(node: int, counter: int) -> bytes:
    return seal(node, counter, m.EVENT, {0: m.EV_LEAK, 1: m.SEV_ALARM, 2: counter, 4: 1, 5: 1})


class Line:
    """The nodes' end of the wire: the pty master. Writes frames, collects the ACKs coming back."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.acked: set[tuple[int, int]] = set()
        self.bad_downlinks = 0
        self._stop = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        dec = framing.Decoder()
        while not self._stop:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # no process holds the slave right now (between kill and restart)
                time.sleep(0.01)
                continue
            for payload in dec.feed(chunk):
                try:
                    node = frame.parse(payload).node_id
                    f, body = frame.unseal(node_keys(node), payload)  # the downlink MIC, as a node checks it
                    if f.mtype == m.ACK:
                        self.acked.add((node, m.decode(m.ACK, body)[0]))
                except ValueError:
                    self.bad_downlinks += 1

    def write(self, raws: list[bytes]) -> None:
        os.write(self.master, b"".join(framing.encode(r) for r in raws))

    def close(self) -> None:
        self._stop = True
        os.close(self.slave)
        os.close(self.master)


def start_sink(tmp) -> tuple[subprocess.Popen, str]:
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


def sink_records(base: str) -> list[dict]:
    out, after = [], 0
    while True:
        req = urllib.request.Request(
            f"{base}/v1/records?limit=1000&after={after}", headers={"Authorization": f"Bearer {SINK_TOKEN}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            doc = json.loads(r.read())
        out += doc["records"]
        if not doc["records"]:
            return out
        after = doc["next"]


def queued(api_port: int) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{api_port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(re.search(r"^lumeau_queue_records (\d+)$", r.read().decode(), re.M).group(1))


def wait_for(cond, timeout: float = 30.0, what: str = "condition"):
    return wait_for_sync(cond, timeout, what)


def test_sigkill_during_a_burst_loses_no_acknowledged_frame(tmp_path):
    registry(tmp_path / "nodes.toml", NODES).save()
    sink, sink_url = start_sink(tmp_path)
    line = Line()
    up_tok = tmp_path / "upstream.token"
    up_tok.write_text(SINK_TOKEN)
    up_tok.chmod(0o600)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
id = "e2e"
[api]
port = 0
token = "{TOKEN}"
[upstream]
url = "{sink_url}/v1/records"
token_file = "upstream.token"
batch_max_records = 50
batch_max_age_s = 0.2
backoff_initial_s = 0.2
backoff_max_s = 1.0
[[serial]]
port = "{line.path}"
mode = "wired"
reconnect_min_s = 0.05
reconnect_max_s = 0.2
""")
    gw = GatewayProcess(cfg)
    sent: list[tuple[int, int]] = []
    try:
        gw.start()
        counter = 0
        deadline = time.monotonic() + 30
        # the burst: alarms from every node, written as fast as the line takes them
        while len(line.acked) < 300 and time.monotonic() < deadline:
            counter += 1
            batch = [(n, counter) for n in NODES]
            line.write([alarm(n, c) for n, c in batch])
            sent += batch
        assert len(line.acked) >= 300, f"only {len(line.acked)} ACKs"
        os.kill(gw.proc.pid, signal.SIGKILL)  # mid-burst: frames in the pty, in the pipeline, in commits
        gw.proc.wait(10)
        acked_before = set(line.acked)
        assert acked_before <= set(sent)

        started = gw.start()  # the same database, the same line
        # the port opens in the background (and drops what arrived while it was closed, as a UART would)
        wait_for(lambda: gw.logged("serial port open"), what="the port reopened")
        # the service is back: new alarms are stored and acknowledged
        more = [(n, counter + 1 + i) for i in range(3) for n in NODES]
        line.write([alarm(n, c) for n, c in more])
        sent += more
        wait_for(lambda: set(more) <= line.acked, what="ACKs after the restart")
        wait_for(lambda: queued(started["api_port"]) == 0, what="the backlog drained to the sink")
        assert gw.stop() == 0
    finally:
        gw.kill()
        line.close()
    try:
        records = sink_records(sink_url)
    finally:
        sink.terminate()
        sink.wait(10)
    keys = [r["id"] for r in records]
    assert len(keys) == len(set(keys)), "a record twice in the sink"
    in_sink = {(int(r["node"], 16), r["counter"]) for r in records}
    lost = sorted(line.acked - in_sink)
    assert not lost, f"{len(lost)} acknowledged alarms lost, e.g. {lost[:5]}"
    assert in_sink <= set(sent)
    for n in NODES:  # per-node order kept through the crash
        counters = [r["counter"] for r in records if int(r["node"], 16) == n]
        assert counters == sorted(counters)
    assert line.bad_downlinks == 0
