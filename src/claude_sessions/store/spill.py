"""Transcript batches a database outage holds back, kept on this node's disk as well as in memory.

A node that is killed while PostgreSQL is away would otherwise lose what its CLIs wrote
meanwhile. Each conversation's waiting batches are one JSON file (written whole, then renamed);
the file goes when they are written. A restart on the same data directory finds them
(:meth:`Spill.left`) and writes them, unless another node took the session since.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, cast

from claude_agent_sdk import SessionKey, SessionStoreEntry

#: (session key, fencing token) the batch was written under; None: no session's.
Lease = tuple[str, int] | None
#: One batch the SDK mirrored: the lease it was written under, where it goes, what it holds.
Batch = tuple[Lease, SessionKey, list[SessionStoreEntry]]


class Spill:
    """One folder of waiting batches, a file per conversation."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._kept: set[str] = set()

    def keep(self, name: str, batches: list[Batch]) -> None:
        """What waits for ``name`` now: written whole, or its file removed when nothing waits."""
        path = self.folder / f"{name}.json"
        if not batches:
            if name in self._kept:
                self._kept.discard(name)
                path.unlink(missing_ok=True)
            return
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = json.dumps([{"lease": lease, "key": key, "entries": entries} for lease, key, entries in batches])
        partial = path.with_suffix(".part")
        with partial.open("w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        partial.replace(path)
        self._kept.add(name)

    def left(self) -> dict[str, list[Batch]]:
        """What a previous run of this node kept and never wrote, by conversation."""
        found: dict[str, list[Batch]] = {}
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            with contextlib.suppress(ValueError, OSError, KeyError, TypeError):
                found[path.stem] = [_batch(item) for item in json.loads(path.read_text(encoding="utf-8"))]
                self._kept.add(path.stem)
        return found


def _batch(item: dict[str, Any]) -> Batch:
    lease = item["lease"]
    kept: Lease = None if lease is None else (str(lease[0]), int(lease[1]))
    return kept, cast(SessionKey, item["key"]), cast(list[SessionStoreEntry], item["entries"])
