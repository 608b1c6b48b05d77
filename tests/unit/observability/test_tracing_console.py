"""`[tracing] exporter = "console"`: spans on stderr, one JSON object per line, for local use."""

from __future__ import annotations

import json

import pytest

from service.core.config import TracingSettings
from service.observability import tracing


def test_console_spans_are_json_lines_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    settings = TracingSettings(enabled=True, exporter="console")
    with tracing.opened(settings), tracing.span("policy.decide", {"imaging.tags_count": 1}):
        pass
    captured = capsys.readouterr()
    spans = [json.loads(line) for line in captured.err.splitlines()]
    assert [span["name"] for span in spans] == ["policy.decide"]
    assert spans[0]["attributes"] == {"imaging.tags_count": 1}
    assert captured.out == ""  # standard output is the audit trail's
