"""Structured JSON logs that carry no personal data.

Log records are JSON objects, one per line, so a value can never forge a second line
(log injection). Only the keys passed in `extra={"fields": {...}}` are emitted; callers
pass ids and statuses, never names, emails, phone numbers or clinical content. The mask
helpers exist for the rare case where an operator needs a hint of a recipient.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace


def mask_email(email: str) -> str:
    """`jane.doe@example.org` -> `j***@e***.org`."""
    local, _, domain = email.partition("@")
    host, _, tld = domain.rpartition(".")
    return f"{local[:1]}***@{host[:1]}***.{tld}" if host else "***"


def mask_phone(phone: str) -> str:
    """`+33612345678` -> `+33******78`."""
    digits = phone.strip()
    return digits[:3] + "*" * max(len(digits) - 5, 0) + digits[-2:] if len(digits) > 5 else "***"


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "event": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({str(k): v for k, v in fields.items()})
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: messages and tracebacks may quote request data.
            entry["error_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str, ensure_ascii=True)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party libraries log request details at DEBUG/INFO; keep them quiet.
    for noisy in ("sqlalchemy", "aiosqlite", "asyncpg", "urllib3", "botocore", "httpx", "temporalio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
