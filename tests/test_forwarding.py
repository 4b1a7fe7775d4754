"""A forward tells a draining holder's 503 from any other by the error it names, not by bytes in its body."""

from __future__ import annotations

import json

import pytest

from claude_sessions.http.common import shutting_down
from claude_sessions.http.forwarding import holder_draining
from claude_sessions.http.openai_answers import openai_body


@pytest.mark.parametrize(
    ("body", "draining"),
    [
        (json.dumps(shutting_down(5).body()).encode(), True),
        (json.dumps(openai_body(shutting_down(5))).encode(), True),  # the OpenAI endpoint names it in ``code``
        (b'{"error": {"type": "node_unavailable", "message": "\\"shutting_down\\""}}', False),
        (b"<html>503 shutting_down</html>", False),
        (b'["shutting_down"]', False),
        (b'{"error": "shutting_down"}', False),
        (b"\xff\xfe", False),
        (b"", False),
    ],
)
def test_only_a_shutting_down_error_reads_as_a_draining_holder(body: bytes, draining: bool) -> None:
    assert holder_draining(body) is draining
