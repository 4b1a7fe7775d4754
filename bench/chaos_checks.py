"""What a chaos soak finds once its faults are over: acknowledged messages lost, duplicated or reordered,
conversations forked, processes and rows leaked (see ``chaos.py``'s docstring for each count)."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import httpx
import psutil
import psycopg

from chaos_cluster import Cluster, say

MARK = re.compile(r"\bc(\d+)-m(\d+)\b")
LEFT_ROWS = """SELECT 'nodes', node_id, status FROM nodes
UNION ALL SELECT 'sessions held', key, holder FROM sessions WHERE holder IS NOT NULL
UNION ALL SELECT 'workers', owner, pid::text FROM workers"""


class Conversation(Protocol):
    """What the checks read of a soak's client: its conversation and what it was told."""

    index: int
    session_id: str
    acked: list[int]
    given_up: list[int]

    def http(self) -> httpx.Client: ...


def marks(texts: list[str]) -> list[tuple[int, int]]:
    """The (client, message) numbers in these texts, in order."""
    return [(int(c), int(m)) for text in texts for c, m in MARK.findall(text)]


def model_views(requests: list[list[str]]) -> tuple[dict[int, list[list[int]]], int]:
    """Each conversation's messages in each model request (oldest request first); requests mixing two."""
    views: dict[int, list[list[int]]] = {}
    mixed = 0
    for texts in requests:
        found = marks(texts)
        if len(owners := sorted({c for c, _ in found})) > 1:
            mixed += 1
            say(f"FINDING forked: one model request holds conversations {owners}: {found}")
        for owner in owners:
            views.setdefault(owner, []).append([m for c, m in found if c == owner])
    return views, mixed


def forks(name: str, seen: list[list[int]]) -> int:
    """Requests whose messages are no prefix of the next longer one's: the conversation ran two ways."""
    found = 0
    for shorter, longer in itertools.pairwise(sorted(seen, key=len)):
        if longer[: len(shorter)] != shorter:
            found += 1
            say(f"FINDING forked {name}: {runs(shorter)} | {runs(longer)}")
    return found


def defects(name: str, where: str, seq: list[int], acked: list[int]) -> tuple[int, int, int]:
    """(lost, duplicated, reordered) of one view of a conversation against its acknowledged messages."""
    counts = Counter(seq)
    lost = [n for n in acked if counts[n] == 0]
    twice = {n: c for n, c in counts.items() if c > 1}
    early = [(a, b) for a, b in itertools.pairwise(dict.fromkeys(seq)) if b < a]
    for label, what in (("lost", lost), ("duplicated", twice), ("reordered", early)):
        if what:
            say(f"FINDING {label} {name} ({where}): {what}; {where} has {runs(seq)}")
    return len(lost), sum(c - 1 for c in twice.values()), len(early)


def runs(seq: list[int]) -> str:
    """``1 2 3 5 5 6`` as ``1-3 5 5-6``."""
    cuts = [i for i in range(1, len(seq)) if seq[i] != seq[i - 1] + 1]
    spans = [seq[a:b] for a, b in itertools.pairwise([0, *cuts, len(seq)])]
    return " ".join(f"{s[0]}-{s[-1]}" if len(s) > 1 else str(s[0]) for s in spans if s)


def transcript(client: Conversation) -> tuple[list[int], int]:
    """The conversation's messages as the API has them, and its ``message_count`` (read again while it settles)."""
    deadline, seq, count = time.monotonic() + 30, list[int](), -1
    with client.http() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
                entries = http.get(f"/v1/sessions/{client.session_id}/history").json()["messages"]
                seq = [m for _, m in marks([_text(e["message"]["content"]) for e in entries if e["type"] == "user"])]
                count = int(http.get(f"/v1/sessions/{client.session_id}").json()["metrics"]["message_count"])
                if set(client.acked) <= set(seq):
                    break
            time.sleep(0.5)
    return seq, count


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(str(b.get("text", "")) for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def check_conversations(clients: Sequence[Conversation], requests: list[list[str]]) -> dict[str, int]:
    views, mixed = model_views(requests)
    totals = Counter({"lost": 0, "duplicated": 0, "reordered": 0, "forked": mixed})
    for client in clients:
        name, seen = client.session_id, views.get(client.index, [])
        modelled = max(seen, key=len, default=[])
        history, count = transcript(client)
        held = len(set(client.acked) | (set(client.given_up) & set(modelled)))
        if count != held:
            say(f"FINDING message_count {name}: {count}, the conversation holds {held} messages")
        by_model = defects(name, "model", modelled, client.acked)
        by_api = defects(name, "history", history, client.acked)
        totals["lost"] += max(by_model[0], by_api[0], held - count)
        totals["duplicated"] += max(by_model[1], by_api[1], count - held)
        totals["reordered"] += max(by_model[2], by_api[2])
        totals["forked"] += forks(name, seen)
    return dict(totals)


def stop_and_count_leaks(cluster: Cluster) -> int:
    """Every node stopped with SIGTERM: what they left (processes, rows), each counted once."""
    cluster.sample()
    for node in cluster.nodes:
        node.signal(signal.SIGCONT)
    for index, node in enumerate(cluster.nodes):
        if not node.stop(signal.SIGTERM):
            say(f"FINDING node{index} did not stop within a minute of SIGTERM: killed")
    for pid in (alive := cluster.left_alive()):
        with contextlib.suppress(psutil.Error):
            say(f"FINDING leaked process {pid}: {' '.join(psutil.Process(pid).cmdline())[:160]}")
            os.kill(pid, signal.SIGKILL)
    with psycopg.connect(cluster.postgres.url("chaos"), autocommit=True) as db:
        rows = db.execute(LEFT_ROWS).fetchall()
    for row in rows:
        say(f"FINDING leaked row: {row}")
    return len(alive) + len(rows)
