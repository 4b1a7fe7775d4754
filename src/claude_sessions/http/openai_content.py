"""OpenAI's message content as the Messages API's: text parts, and images sent inside the request.

An ``image_url`` part becomes an image block only from a ``data:`` URL: the server fetches
nothing, so any other URL is refused with the part named (``param``).
"""

from __future__ import annotations

import re
from typing import Any

from claude_sessions.content import Content, check_content
from claude_sessions.errors import InvalidContentError, InvalidImageError
from claude_sessions.http.common import ApiError

#: A message's content as OpenAI's body has it: a string, parts, or nothing.
Parts = str | list[dict[str, Any]] | None


def invalid(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request", message, extra={"param": param})


#: An image inside the request: ``data:<media type>;base64,<data>``.
_DATA_URL = re.compile(r"data:([^;,]{1,100});base64,(.*)", re.DOTALL)


def text_content(content: Parts, index: int) -> str:
    """A system's, developer's or assistant's message: a string, or text parts; anything else is refused."""
    if content is None or isinstance(content, str):
        return content or ""
    return _joined([_part(part, f"messages.{index}.content.{j}", False) for j, part in enumerate(content)])


def user_content(content: Parts, index: int, image_max_bytes: int) -> Content:
    """A user's message: text, or text and images (``image_url`` parts with ``data:`` URLs), checked."""
    if content is None or isinstance(content, str):
        return content or ""
    blocks = [_part(part, f"messages.{index}.content.{j}", True) for j, part in enumerate(content)]
    if all(block["type"] == "text" for block in blocks):
        return _joined(blocks)
    try:
        return check_content(blocks, image_max_bytes)
    except InvalidContentError as error:  # named as OpenAI's body has it: the part, not our block's inside
        part = error.within(f"messages.{index}").param.split(".")[:4]
        raise type(error)(error.reason, ".".join(part)) from None


def _joined(blocks: list[dict[str, Any]]) -> str:
    """Text parts as one text: OpenAI's parts are pieces of one message, joined as they come."""
    return "".join(block["text"] for block in blocks)


def _part(part: dict[str, Any], param: str, images: bool) -> dict[str, Any]:
    """One content part as a Messages API block; a part this endpoint does not take is refused, never dropped."""
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind != "image_url":
        raise invalid(param, f"{param}: parts of type {str(kind)[:40]!r} are not supported; use text or image_url")
    if not images:
        raise invalid(param, f"{param}: images are accepted in user messages only")
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url.startswith("data:"):
        raise invalid(
            param, f"{param}: an image_url must be a data: URL (data:image/png;base64,...); the server fetches nothing"
        )
    found = _DATA_URL.fullmatch(url)
    if found is None:
        raise InvalidImageError("a data: URL must read data:<media type>;base64,<data>", param)
    return {"type": "image", "source": {"type": "base64", "media_type": found[1], "data": found[2]}}
