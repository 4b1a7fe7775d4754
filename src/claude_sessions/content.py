"""A user message's content: text, or text and images, checked once where it enters.

The library and both HTTP surfaces take the same content, the Messages API's blocks:
``{"type": "text", "text"}`` and ``{"type": "image", "source": {"type": "base64",
"media_type", "data"}}``. Images travel inside the message, so the server fetches
nothing; each is decoded here to hold it to ``IMAGE_MAX_BYTES`` and to check that its
bytes are the image its media type names, before any model call is paid for.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from claude_sessions.errors import ImageTooLargeError, InvalidContentError, InvalidImageError

#: What a user message holds: plain text, or content blocks.
Content = str | list[dict[str, Any]]

#: The image media types the model reads, each with the bytes its files start with.
MEDIA_TYPES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
_SOURCE_KEYS = {"type", "media_type", "data"}
#: At most this many images in one message (the model API's own limit per request is higher).
MAX_IMAGES = 20


def check_content(content: object, image_max_bytes: int) -> Content:
    """``content`` as the CLI takes it, or a typed error naming the block at fault (``param``)."""
    if isinstance(content, str):
        if not content.strip():
            raise InvalidContentError("the message is empty; send some text or an image", "content")
        return content
    if not isinstance(content, list) or not content:
        raise InvalidContentError("must be a non-empty string or a non-empty list of blocks", "content")
    blocks = [_block(block, f"content.{index}", image_max_bytes) for index, block in enumerate(content)]
    images = sum(block["type"] == "image" for block in blocks)
    if images > MAX_IMAGES:
        raise ImageTooLargeError(f"{images} images in one message; at most {MAX_IMAGES} are allowed", "content")
    if not images and not text_of(blocks).strip():
        raise InvalidContentError("the message is empty; send some text or an image", "content")
    return blocks


def _block(block: object, param: str, image_max_bytes: int) -> dict[str, Any]:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text" and isinstance(block, dict) and isinstance(block.get("text"), str) and len(block) == 2:
        return {"type": "text", "text": block["text"]}
    if kind == "image" and isinstance(block, dict) and set(block) == {"type", "source"}:
        return {"type": "image", "source": _image_source(block["source"], f"{param}.source", image_max_bytes)}
    raise InvalidContentError(
        "a block is {'type': 'text', 'text': str} or {'type': 'image', 'source': {'type': "
        "'base64', 'media_type', 'data'}}",
        param,
    )


def _image_source(source: object, param: str, image_max_bytes: int) -> dict[str, str]:
    if not (isinstance(source, dict) and source.get("type") == "base64" and set(source) == _SOURCE_KEYS):
        raise InvalidImageError(
            "an image's source is {'type': 'base64', 'media_type', 'data'}; the server fetches nothing",
            param,
        )
    media_type, data = source["media_type"], source["data"]
    if not isinstance(media_type, str) or media_type not in MEDIA_TYPES:
        raise InvalidImageError(
            f"{str(media_type)[:50]!r} is not accepted; use one of {', '.join(MEDIA_TYPES)}",
            f"{param}.media_type",
        )
    image = _decoded(data, f"{param}.data", image_max_bytes)
    if not image.startswith(MEDIA_TYPES[media_type]) or (media_type == "image/webp" and image[8:12] != b"WEBP"):
        raise InvalidImageError(f"the data is not a {media_type[6:].upper()} image", f"{param}.data")
    return {"type": "base64", "media_type": media_type, "data": data}


def _decoded(data: object, param: str, image_max_bytes: int) -> bytes:
    """The image's bytes; its size is read from the text's length before anything is decoded."""
    if not isinstance(data, str):
        raise InvalidImageError("must be the image's bytes in base64", param)
    if len(data) // 4 * 3 > image_max_bytes + 2:
        raise ImageTooLargeError(f"the image is larger than IMAGE_MAX_BYTES ({image_max_bytes} bytes) allows", param)
    try:
        image = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError("must be the image's bytes in base64", param) from None
    if len(image) > image_max_bytes:
        raise ImageTooLargeError(f"the image is larger than IMAGE_MAX_BYTES ({image_max_bytes} bytes) allows", param)
    return image


def text_of(content: Content) -> str:
    """The text of a message, its images left out."""
    if isinstance(content, str):
        return content
    return "\n".join(block["text"] for block in content if block.get("type") == "text")


def slash_command(prompt: str) -> str | None:
    """The CLI command a message starts with (``"/model x"`` -> ``"model"``), or None."""
    text = prompt.lstrip()
    if not text.startswith("/"):
        return None
    return text[1:].split(maxsplit=1)[0] if text[1:].strip() else ""
