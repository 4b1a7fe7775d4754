"""Conversations that arrive whole: chat clients (OpenAI's) resend the history with every request.

A digest of the history finds the session that already holds it, so only the new
message reaches the CLI. A history no session holds becomes a transcript the CLI
resumes: the earlier messages are real earlier turns of its conversation, not one
flattened prompt and not a model call each.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from claude_sessions.content import Content

Role = Literal["user", "assistant"]
#: One earlier message: a user's (text, or text and images) or the model's text.
Turn = tuple[Role, Content]


def history_digest(tenant: str, system: str | None, model: str | None, turns: Sequence[Turn]) -> str:
    """One value per (tenant, system prompt, model, messages): equal only for the same conversation."""
    canonical = json.dumps([tenant, system, model, [list(turn) for turn in turns]], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def transcript_entries(conversation_id: str, cwd: Path, turns: Sequence[Turn]) -> list[dict[str, Any]]:
    """``turns`` as the CLI's transcript entries of ``conversation_id`` (read back by ``resume``)."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    common = {"isSidechain": False, "userType": "external", "cwd": str(cwd), "sessionId": conversation_id}
    parent: str | None = None
    entries: list[dict[str, Any]] = []
    for role, content in turns:
        entry_id = str(uuid.uuid4())
        if role == "user":
            message: dict[str, object] = {"role": "user", "content": content}
        else:
            message = {
                "id": f"msg_imported_{entry_id[:8]}",
                "type": "message",
                "role": "assistant",
                "model": "imported",
                "content": [{"type": "text", "text": content}] if isinstance(content, str) else content,
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
        entry = {"parentUuid": parent, **common, "type": role, "message": message, "uuid": entry_id, "timestamp": now}
        entries.append(entry)
        parent = entry_id
    return entries
