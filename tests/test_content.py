"""A user message's content is checked before any model call: text, or text and real images."""

from __future__ import annotations

import base64

import pytest

from claude_sessions import ImageTooLargeError, InvalidContentError, InvalidImageError
from claude_sessions.content import MAX_IMAGES, check_content, text_of
from helpers import image_block, png

LIMIT = 5_242_880


def test_text_and_real_images_pass_as_blocks() -> None:
    assert check_content("hello", LIMIT) == "hello"
    blocks = [{"type": "text", "text": "what is this?"}, image_block(png())]
    assert check_content(blocks, LIMIT) == blocks
    gif = {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lGODlhAQABAAAAACw="}}
    assert check_content([gif], LIMIT) == [gif]  # an image alone is a message
    assert text_of(blocks) == "what is this?"


@pytest.mark.parametrize("content", ["", "   ", [], [{"type": "text", "text": " "}], 5, None])
def test_an_empty_message_is_refused_naming_the_content(content: object) -> None:
    with pytest.raises(InvalidContentError) as refused:
        check_content(content, LIMIT)
    assert refused.value.param == "content" and str(refused.value).startswith("content: ")


def test_a_bad_image_is_named_by_its_place_and_says_what_is_allowed() -> None:
    cases: list[tuple[dict[str, object], str, str]] = [
        (image_block(png(), "image/bmp"), "content.1.source.media_type", "image/png, image/jpeg"),
        (
            {"type": "image", "source": {"type": "base64", "media_type": {}, "data": ""}},
            "content.1.source.media_type",
            "",
        ),
        (image_block(png(), "image/jpeg"), "content.1.source.data", "not a JPEG image"),
        (image_block(b"RIFF\x00\x00\x00\x00WAVE", "image/webp"), "content.1.source.data", "not a WEBP image"),
        ({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%%"}}, "", "base64"),
        ({"type": "image", "source": {"type": "url", "url": "http://127.0.0.1:1/x.png"}}, "", "fetches nothing"),
    ]
    for block, param, words in cases:
        with pytest.raises(InvalidImageError) as refused:
            check_content([{"type": "text", "text": "look"}, block], LIMIT)
        assert refused.value.param.startswith(param or "content.1.source") and words in str(refused.value)
        assert refused.value.kind == "invalid_image"


def test_a_block_of_another_kind_is_invalid_content_not_an_image() -> None:
    with pytest.raises(InvalidContentError) as refused:
        check_content([{"type": "document", "source": {}}], LIMIT)
    assert type(refused.value) is InvalidContentError and refused.value.param == "content.0"
    assert "'type': 'text'" in str(refused.value) and "'type': 'image'" in str(refused.value)


def test_too_large_an_image_or_too_many_images_is_image_too_large() -> None:
    big = png(64, 64)
    with pytest.raises(ImageTooLargeError) as large:
        check_content([image_block(big)], len(big) - 1)
    assert large.value.param == "content.0.source.data" and f"IMAGE_MAX_BYTES ({len(big) - 1}" in str(large.value)
    assert check_content([image_block(big)], len(big))  # exactly the limit passes
    huge = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(8 * LIMIT)).decode()  # refused by its length, not decoded
    with pytest.raises(ImageTooLargeError):
        check_content([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": huge}}], LIMIT)
    with pytest.raises(ImageTooLargeError) as many:
        check_content([image_block(png())] * (MAX_IMAGES + 1), LIMIT)
    assert many.value.param == "content" and f"at most {MAX_IMAGES}" in str(many.value)
    assert check_content([image_block(png())] * MAX_IMAGES, LIMIT)


def test_an_error_found_inside_a_larger_body_names_its_whole_path() -> None:
    error = InvalidImageError("the data is not a PNG image", "content.1.source.data").within("messages.3")
    assert type(error) is InvalidImageError and error.param == "messages.3.content.1.source.data"
    assert str(error) == "messages.3.content.1.source.data: the data is not a PNG image"
