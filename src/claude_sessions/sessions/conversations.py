"""Sessions' conversations as the CLI records them: where each lives, what it holds, whether it is lost.

A conversation is named by the CLI's project key (from the session's working directory) and
its conversation id; the archive holds its transcript (the CLI's files, or PostgreSQL).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import structlog
from claude_agent_sdk import AssistantMessage, Message, ResultMessage, TextBlock, project_key_for_directory
from claude_agent_sdk._internal.message_parser import parse_message

from claude_sessions.config import SessionConfig, SystemConfig
from claude_sessions.sessions.session import Session
from claude_sessions.store.archive import TranscriptArchive
from claude_sessions.workers.workspaces import session_cwd

log = structlog.get_logger("claude_sessions.manager")


class Conversations:
    """Finds and reads sessions' transcripts in the archive."""

    def __init__(self, config: SystemConfig, archive: TranscriptArchive) -> None:
        self.config, self.archive = config, archive
        self._projects: dict[str | None, str] = {}

    def project_of(self, options: SessionConfig) -> str:
        """The CLI's project key for a session's working directory."""
        return self.project_of_cwd(options.cwd)

    def project_of_cwd(self, cwd: str | None) -> str:
        """Resolved once per ``cwd``, the only option it depends on (orphan detection asks for every session).

        A ``cwd`` a symlink has since led elsewhere is taken as written (the stored folder is
        the one its CLI ran in): the session can still be found, deleted and checked, while
        a spawn there is refused.
        """
        project = self._projects.get(cwd)
        if project is None:
            try:
                folder = session_cwd(SessionConfig(cwd=cwd), self.config)
            except ValueError:
                folder = Path(os.path.normpath(self.config.runtime.workspace_root / (cwd or "")))
            project = self._projects[cwd] = project_key_for_directory(folder)
        return project

    async def read_transcript(self, session: Session) -> list[dict[str, Any]]:
        """The conversation as the CLI recorded it: user and assistant entries, oldest first."""
        conversation = session.conversation(self.project_of(session.config))
        if conversation is None:
            return []
        return [
            {
                "type": entry["type"],
                "uuid": entry.get("uuid"),
                "timestamp": entry.get("timestamp"),
                "message": entry.get("message"),
            }
            for entry in await self.archive.entries(conversation)
            if _is_message(entry)
        ]

    async def is_orphaned(self, session: Session) -> bool:
        """The conversation was recorded, but its transcript is gone."""
        conversation = session.conversation(self.project_of(session.config))
        return session.recorded and conversation is not None and not await self.archive.exists(conversation)

    async def settle_unfinished(self, session: Session, prompt: str | None) -> list[dict[str, Any]] | None:
        """Settle a turn that never ended (its CLI or node died) by what its transcript holds (``prompt``:
        the uuid its prompt carries there).

        Its final answer there: the turn stands, and its entries from the prompt on are returned.
        Otherwise what it wrote goes, its count with it: its caller, never told the answer, sends it
        again and it runs once. A conversation it began goes whole.
        """
        conversation = session.conversation(self.project_of(session.config))
        entries = await self.archive.entries(conversation) if conversation is not None else []
        start, ended = turn_in(entries, prompt)
        if start is not None and ended:
            return entries[start:]
        session.metrics.message_count = max(0, session.metrics.message_count - 1)
        if start is None or conversation is None:  # nothing of it reached the transcript
            return None
        log.info("unfinished_turn_rolled_back", session_id=session.id, entries=len(entries) - start)
        if not any(entry.get("type") in ("user", "assistant") for entry in entries[:start]):
            await self.archive.delete(self.archive.name(conversation))
            session.claude_session_id, session.recorded = None, False
        else:
            await self.archive.truncate(conversation, start)
        return None

    async def conversation_to_resume(self, session: Session) -> str | None:
        """The conversation a new worker must continue, if any.

        A conversation id seen only at a turn's start, whose transcript never got
        written (the process died first), names nothing to continue: it is dropped.
        """
        conversation = session.conversation(self.project_of(session.config))
        if conversation is None or session.recorded or await self.archive.exists(conversation):
            return session.claude_session_id
        log.info("conversation_never_recorded", session_id=session.id, claude_session_id=session.claude_session_id)
        session.claude_session_id = None
        return None


def turn_in(entries: list[dict[str, Any]], prompt: str | None) -> tuple[int | None, bool]:
    """Where the turn left running begins in a transcript (None: nothing of it is there), and whether
    its final answer (``end_turn``) is there too.

    It is found by the uuid its prompt carries (``prompt``). A row that names no prompt, or one
    that a later prompt follows (saved by an older version), falls back to the last prompt with
    no final answer after it.
    """
    start = next((i for i, entry in enumerate(entries) if prompt and entry.get("uuid") == prompt), None)
    if start is not None and not any(_is_prompt(entry) for entry in entries[start + 1 :]):
        return start, any(_is_final(entry) for entry in entries[start:])
    if prompt and start is None:
        return None, False
    for index in range(len(entries) - 1, -1, -1):
        if _is_final(entries[index]):
            return None, False
        if _is_prompt(entries[index]):
            return index, False
    return None, False


def _is_final(entry: dict[str, Any]) -> bool:
    return entry.get("type") == "assistant" and (entry.get("message") or {}).get("stop_reason") == "end_turn"


def _is_prompt(entry: dict[str, Any]) -> bool:
    """A user's message (not a tool's result, a system note or a command the CLI ran itself)."""
    if entry.get("type") != "user" or not _is_message(entry):
        return False
    content = (entry.get("message") or {}).get("content")
    return isinstance(content, str) or not any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content or []
    )


def answer_of(entries: list[dict[str, Any]], session: Session) -> list[Message]:
    """A finished turn's answer as its caller would have read it (``entries``: its own, the prompt first):
    the model's messages and the tools' results, parsed by the SDK's own parser, then a result. Its
    spend was its dead holder's to record: the result gives the session's total as saved."""
    replies = [_parsed(entry) for entry in entries[1:] if _is_message(entry)]
    messages = [m for m in replies if m is not None]
    said = [b.text for m in messages if isinstance(m, AssistantMessage) for b in m.content if isinstance(b, TextBlock)]
    result = ResultMessage(
        subtype="success",
        duration_ms=0,
        duration_api_ms=0,
        is_error=False,
        num_turns=sum(isinstance(m, AssistantMessage) for m in messages),
        session_id=session.claude_session_id or "",
        stop_reason="end_turn",
        total_cost_usd=session.metrics.total_cost,
        result=said[-1] if said else "",
        user_message_uuid=entries[0].get("uuid"),
    )
    return [*messages, result]


def _parsed(entry: dict[str, Any]) -> Message | None:
    """An entry as the SDK's message; None for one it cannot read (skipped, never blocking the session)."""
    try:
        return parse_message(entry)
    except Exception as error:
        log.warning("transcript_entry_unreadable", uuid=entry.get("uuid"), error=repr(error))
        return None


def _is_message(entry: dict[str, Any]) -> bool:
    """Said by the user, the model or a tool: not a system note, nor a command the CLI ran itself."""
    return entry.get("type") in ("user", "assistant") and not entry.get("isMeta") and not _is_command(entry)


def _is_command(entry: dict[str, Any]) -> bool:
    """The CLI's record of a command it ran itself (the ``/clear`` that readied a pooled worker)."""
    content = (entry.get("message") or {}).get("content")
    return isinstance(content, str) and content.startswith(("<command-name>", "<local-command-stdout>"))


def chat_messages(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Transcript entries (``read_transcript``) as a chat renders them: ``{role, content}`` in order,
    with the model's tool calls, the tools' results and a count of images beside the text.

    The CLI writes one entry per content block of an assistant message; those of one message are
    joined again.
    """
    messages: list[dict[str, Any]] = []
    last_id: str | None = None
    for entry in entries:
        message = entry.get("message") or {}
        role = "assistant" if entry["type"] == "assistant" else "user"
        message_id = message.get("id") if role == "assistant" else None
        if message_id is not None and message_id == last_id and messages:
            _add_blocks(messages[-1], message.get("content"))
            continue
        last_id = message_id
        chat: dict[str, Any] = {"role": role, "content": ""}
        _add_blocks(chat, message.get("content"))
        messages.append(chat)
    return messages


def _add_blocks(chat: dict[str, Any], content: Any) -> None:
    """Add a message's content (a string, or blocks) to its chat form."""
    for block in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
        kind = block.get("type")
        if kind == "text":
            chat["content"] += ("\n\n" if chat["content"] else "") + str(block.get("text", ""))
        elif kind == "tool_use":
            call = {"id": block.get("id"), "name": block.get("name"), "input": block.get("input")}
            chat.setdefault("tool_calls", []).append(call)
        elif kind == "tool_result":
            result = {
                "tool_use_id": block.get("tool_use_id"),
                "content": _result_text(block.get("content")),
                "is_error": bool(block.get("is_error")),
            }
            chat.setdefault("tool_results", []).append(result)
        elif kind == "image":
            chat["images"] = chat.get("images", 0) + 1


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(str(b.get("text", "")) for b in content or [] if isinstance(b, dict) and b.get("type") == "text")
