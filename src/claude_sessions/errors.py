"""A flat tree of typed exceptions, so callers (and the HTTP layer) can map each
failure to a precise answer instead of parsing messages."""

from __future__ import annotations


class ClaudeSessionsError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ClaudeSessionsError, ValueError):
    """A configuration value is invalid; the message names the variable."""


class SessionLimitError(ClaudeSessionsError, RuntimeError):
    """``SM_MAX_SESSIONS`` sessions are registered already."""


class SessionExistsError(ClaudeSessionsError):
    """The requested session id is taken."""


class SessionNotFoundError(ClaudeSessionsError, KeyError):
    """No session is registered under this id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "session not found"


class SlashCommandRefusedError(ClaudeSessionsError, ValueError):
    """A message starts with a CLI command outside ``SLASH_COMMANDS_ALLOWED``.

    Commands such as ``/config`` or ``/model`` change the CLI's settings, which
    must stay the operator's; ``command`` names the refused one (without ``/``).
    """

    def __init__(self, command: str) -> None:
        super().__init__(f"slash command /{command} is not permitted on this server")
        self.command = command


class SessionBusyError(ClaudeSessionsError):
    """Another turn of this session is running."""


class SessionOrphanedError(ClaudeSessionsError):
    """The session's transcript is gone: its conversation cannot be continued."""


class ModelError(ClaudeSessionsError):
    """The turn's model call failed after the CLI's retries; raised once the turn's messages are out.

    ``status`` is the model API's HTTP status, when known.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.status = message, status


class TurnTimeoutError(ClaudeSessionsError, TimeoutError):
    """A turn ran past ``OPT_MESSAGE_TIMEOUT``; it was interrupted."""


class WorkerError(ClaudeSessionsError, ConnectionError):
    """The CLI process behind a session failed (died, could not start or connect)."""


class WorkerStartError(WorkerError):
    """A CLI process could not be started and connected within ``OPT_CREATE_TIMEOUT``."""


class WorkerDiedError(WorkerError):
    """The CLI process exited mid-turn; the next message resumes the conversation."""


class CapacityError(WorkerError):
    """Every live worker (``CP_MAX_LIVE``) stayed mid-turn for ``OPT_CREATE_TIMEOUT``."""


class HandlerClosedError(ClaudeSessionsError, RuntimeError):
    """The handler was closed; it accepts no more work."""


class DatabaseUnavailableError(ClaudeSessionsError, ConnectionError):
    """The registry's database did not answer in time; nothing was changed. Retry shortly."""


class LeaseLostError(ClaudeSessionsError):
    """Another node took this session's conversation over (this node was paused or cut off);
    this node's CLI for it was dropped and its write refused. Retry: the owner answers."""


class SessionHeldElsewhereError(ClaudeSessionsError):
    """The session's live CLI runs on another node of the cluster, at ``node_url``.

    The HTTP API forwards the request there; a library caller sends it there itself.
    """

    def __init__(self, message: str, session_key: str, node_id: str, node_url: str) -> None:
        super().__init__(message)
        self.session_key, self.node_id, self.node_url = session_key, node_id, node_url


class ClusterModeError(ClaudeSessionsError, RuntimeError):
    """A synchronous registry call was made on a PostgreSQL registry, which only answers awaited calls."""


class TurnRefusedError(ClaudeSessionsError):
    """A tenant's limit refused a turn before it started; retry after ``retry_after`` seconds."""

    kind = "turn_refused"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BudgetExceededError(TurnRefusedError):
    """The tenant spent its ``TENANT_DAILY_USD`` for this UTC day; ``retry_after`` reaches midnight."""

    kind = "budget_exceeded"


class RateLimitedError(TurnRefusedError):
    """The tenant started its ``TENANT_TURNS_PER_MINUTE`` turns in the last minute."""

    kind = "rate_limited"


class InvalidContentError(ClaudeSessionsError, ValueError):
    """A user message's content is not text or text and image blocks; ``param`` is the block at fault."""

    kind = "invalid_request"

    def __init__(self, reason: str, param: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.reason, self.param = reason, param

    def within(self, prefix: str) -> InvalidContentError:
        """The same error for content found at ``prefix`` of a larger body (``messages.2``)."""
        return type(self)(self.reason, f"{prefix}.{self.param}")


class InvalidImageError(InvalidContentError):
    """An image block's media type is not one accepted, or its data is not that image."""

    kind = "invalid_image"


class ImageTooLargeError(InvalidContentError):
    """An image decodes past ``IMAGE_MAX_BYTES``, or a message carries more images than one may."""

    kind = "image_too_large"


class PermissionNotFoundError(ClaudeSessionsError, KeyError):
    """No asked tool call of this session has this request id (another session's has none here either)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "permission request not found"


class ToolCallNotFoundError(ClaudeSessionsError, KeyError):
    """No call of a client's function waits for its result under this id in this session."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "tool call not found"


class PermissionDecidedError(ClaudeSessionsError):
    """The asked tool call was already answered (by its user, or denied by an interrupt)."""


class PermissionExpiredError(ClaudeSessionsError):
    """The asked tool call waited ``PERMISSION_TIMEOUT_SECONDS`` unanswered and was denied."""
