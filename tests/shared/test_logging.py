"""Structured logs: one JSON object per line, only the fields passed, masked recipients."""

from __future__ import annotations

import json
import logging

import pytest

from services.shared.logging import JsonFormatter, mask_email, mask_phone


def test_masking_keeps_only_a_hint() -> None:
    assert mask_email("jane.doe@example.org") == "j***@e***.org"
    assert mask_phone("+33612345678") == "+33*******78"
    assert "jane" not in mask_email("jane@example.org")


@pytest.mark.req("SEC-01")
def test_records_are_single_json_lines_that_cannot_be_forged() -> None:
    formatter = JsonFormatter("test")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "login failed\nINFO forged line", None, None)
    record.fields = {"account_id": "a-1", "attempt": 3}
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["event"] == "login failed\nINFO forged line"
    assert entry["account_id"] == "a-1" and entry["service"] == "test"


def test_exceptions_log_their_type_not_their_message() -> None:
    formatter = JsonFormatter("test")
    try:
        raise ValueError("patient jane@example.org has cancer")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "rpc failed", None, sys.exc_info())
    entry = json.loads(formatter.format(record))
    assert entry["error_type"] == "ValueError"
    assert "jane" not in json.dumps(entry) and "cancer" not in json.dumps(entry)
