"""Opening the store a deployment runs on: one node's SQLite and the CLI's files, or PostgreSQL."""

from __future__ import annotations

from claude_sessions.config import SystemConfig
from claude_sessions.store.archive import FileArchive, StoreArchive, TranscriptArchive
from claude_sessions.store.postgres import PostgresRegistry
from claude_sessions.store.registry import Registry
from claude_sessions.store.sqlite import SqliteRegistry
from claude_sessions.store.transcripts import PostgresTranscriptStore

#: The longest a registry call may wait for PostgreSQL (and at most ``OPT_CREATE_TIMEOUT``).
DATABASE_TIMEOUT = 5.0


def open_registry(config: SystemConfig, node_id: str) -> tuple[Registry, TranscriptArchive]:
    """SQLite and the CLI's files for one node; PostgreSQL for both when a database URL is set."""
    lease, files = config.cluster.LEASE_SECONDS, FileArchive(config.runtime.config_dir / "projects")
    dsn = config.cluster.dsn
    if dsn is None:
        return SqliteRegistry(config.runtime.DATA_DIR.resolve() / "sessions.db", node_id, lease), files
    timeout = min(DATABASE_TIMEOUT, config.optimization.CREATE_TIMEOUT)
    store = PostgresTranscriptStore(dsn, min_size=0, timeout=timeout)
    registry = PostgresRegistry(dsn, node_id, lease, timeout=timeout)
    return registry, StoreArchive(store, files, registry, config.runtime.DATA_DIR.resolve() / "spill" / "transcripts")
