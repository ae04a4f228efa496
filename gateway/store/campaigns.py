"""Firmware update campaigns (gateway/campaigns.py): tables `campaigns` and `campaign_nodes`.

A campaign is a row (its state as JSON, and its release image: the runner needs it again after
a restart to deliver the rest); each of its nodes a row of `campaign_nodes` (progress as JSON).
Written through the writer's group commit (`submit`): on disk when the coroutine returns.
At most KEEP_ENDED ended campaigns are kept: the oldest go, with their nodes, when a new one
is created.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from gateway.store.core import Writer

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    id INTEGER PRIMARY KEY,
    doc TEXT NOT NULL,
    image BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS campaign_nodes (
    campaign_id INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (campaign_id, node_id)
);
"""

KEEP_ENDED = 100
ENDED = ("done", "halted", "aborted")

_NODE_UPSERT = (
    "INSERT INTO campaign_nodes (campaign_id, node_id, doc) VALUES (?, ?, ?) "
    "ON CONFLICT (campaign_id, node_id) DO UPDATE SET doc = excluded.doc"
)


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


class CampaignTable:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._loaded: list[tuple[int, dict[str, Any], dict[int, dict[str, Any]]]] = []

    def load(self, r: sqlite3.Connection) -> None:
        nodes: dict[int, dict[int, dict[str, Any]]] = {}
        for cid, nid, doc in r.execute("SELECT campaign_id, node_id, doc FROM campaign_nodes"):
            nodes.setdefault(cid, {})[nid] = json.loads(doc)
        self._loaded = [
            (cid, json.loads(doc), nodes.get(cid, {}))
            for cid, doc in r.execute("SELECT id, doc FROM campaigns ORDER BY id")
        ]

    def rows(self) -> list[tuple[int, dict[str, Any], dict[int, dict[str, Any]]]]:
        """What `load` read at open: (id, campaign doc, {node id: node doc}); handed over once."""
        out, self._loaded = self._loaded, []
        return out

    async def create(self, doc: dict[str, Any], image: bytes, nodes: dict[int, dict[str, Any]]) -> int:
        """A new campaign, its image and nodes, in one transaction; its id."""

        def op(c: sqlite3.Connection) -> int:
            cid = c.execute("INSERT INTO campaigns (doc, image) VALUES (?, ?)", (_dump(doc), image)).lastrowid
            assert cid is not None
            c.executemany(_NODE_UPSERT, [(cid, n, _dump(d)) for n, d in nodes.items()])
            old = [
                r[0]
                for r in c.execute("SELECT id, doc FROM campaigns WHERE id != ? ORDER BY id DESC", (cid,))
                if json.loads(r[1]).get("state") in ENDED
            ][KEEP_ENDED:]
            c.executemany("DELETE FROM campaign_nodes WHERE campaign_id = ?", [(x,) for x in old])
            c.executemany("DELETE FROM campaigns WHERE id = ?", [(x,) for x in old])
            return cid

        return int(await self.writer.submit(op))

    async def save(self, cid: int, doc: dict[str, Any], nodes: dict[int, dict[str, Any]]) -> None:
        """A campaign's state and the nodes given (the others unchanged)."""
        rows = [(cid, n, _dump(d)) for n, d in nodes.items()]
        text = _dump(doc)

        def op(c: sqlite3.Connection) -> None:
            c.execute("UPDATE campaigns SET doc = ? WHERE id = ?", (text, cid))
            c.executemany(_NODE_UPSERT, rows)

        await self.writer.submit(op)

    def image(self, cid: int) -> bytes:
        r = self.writer.reader
        assert r is not None
        row = r.execute("SELECT image FROM campaigns WHERE id = ?", (cid,)).fetchone()
        if row is None:
            raise KeyError(cid)
        return bytes(row[0])

    def forget(self, ids: list[int]) -> list[int]:
        """Ids of campaigns no longer in the table (deleted as old): the manager drops them too."""
        r = self.writer.reader
        assert r is not None
        have = {x for (x,) in r.execute("SELECT id FROM campaigns")}
        return [i for i in ids if i not in have]
