"""What a database outage holds back, kept on this node's disk as well as in memory.

A node that is killed while PostgreSQL is away would otherwise lose what it did meanwhile
(the transcript batches its CLIs wrote, the session records of the turns it finished). Each
name's waiting items are one JSON file, written whole and then renamed; the file goes when
nothing waits. A restart on the same data directory finds them (:meth:`Spill.left`) and
writes them, fenced, unless another node took the session since.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


class Spill:
    """One folder of waiting items, a file per name (a name is never a tenant's text)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._kept: set[str] = set()

    def keep(self, name: str, items: list[Any]) -> None:
        """What waits for ``name`` now: written whole, or its file removed when nothing waits."""
        path = self.folder / f"{name}.json"
        if not items:
            if name in self._kept:
                self._kept.discard(name)
                path.unlink(missing_ok=True)
            return
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        with partial.open("w", encoding="utf-8") as file:
            file.write(json.dumps(items))
            file.flush()
            os.fsync(file.fileno())
        partial.replace(path)
        self._kept.add(name)

    def left(self) -> dict[str, list[Any]]:
        """What a previous run of this node kept and never wrote, by name (unreadable files are skipped)."""
        found: dict[str, list[Any]] = {}
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            with contextlib.suppress(ValueError, OSError):
                items = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(items, list):
                    found[path.stem] = items
                    self._kept.add(path.stem)
        return found
