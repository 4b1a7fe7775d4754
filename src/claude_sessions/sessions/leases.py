"""Where a session's turns run: this node takes its lease, or the caller is sent to the live node holding it.

A session's CLI lives on one node at a time. A request for it elsewhere is refused with the holder's
address (the HTTP API forwards it there); a lease nobody holds, or a dead or draining holder's,
is taken here, raising the fencing token every write of the session carries.
"""

from __future__ import annotations

from claude_sessions.errors import SessionBusyError, SessionHeldElsewhereError, SessionNotFoundError
from claude_sessions.sessions.session import Session
from claude_sessions.sessions.view import SessionView
from claude_sessions.store.records import Holder, Lease


class Leases:
    """Takes sessions' leases for this node's turns, or says which node holds them."""

    def __init__(self, manager: SessionView) -> None:
        self.manager = manager

    async def claim(self, session: Session, forwarded: bool) -> Lease:
        """The session's lease, taken for a turn here; :class:`SessionHeldElsewhereError` if a live
        node holds it (``forwarded``: the request was sent here as its holder's)."""
        registry = self.manager.registry
        elsewhere = session.holder not in (None, registry.node_id)
        if elsewhere and session.holder_url and not forwarded:
            # Read a moment ago (``fetch``): a live node holds it. A claim could only say the same;
            # should that node have let go since, it takes the forwarded turn itself.
            raise held_elsewhere(session.id, Holder(str(session.holder), session.holder_url))
        claim = await registry.claim(session.id)
        if claim is None:
            self.manager.get(session.id)  # the view still has it: gone since
            raise SessionNotFoundError(f"session {session.public_id!r} not found")
        if isinstance(claim, Holder):
            if forwarded:  # sent here as its holder, but it moved on meanwhile
                raise SessionBusyError(f"session {session.public_id!r} is moving between nodes; retry")
            raise held_elsewhere(session.id, claim)
        return claim

    async def refuse_if_held_elsewhere(self, key: str, *, forwarded: bool) -> None:
        """A session whose live CLI runs on another live node is acted on there (the API forwards)."""
        if forwarded:
            return
        holder = await self.manager.registry.holder(key)
        if holder is not None:
            raise held_elsewhere(key, holder)


def held_elsewhere(session_id: str, holder: Holder) -> SessionHeldElsewhereError:
    message = f"session {session_id!r} runs on node {holder.node_id}"
    return SessionHeldElsewhereError(message, session_id, holder.node_id, holder.url)
