"""`python -m services.notifications.dev_smtp`: a local SMTP catcher for the dev stack.

Listens on NOTIFICATIONS_SMTP_HOST:NOTIFICATIONS_SMTP_PORT (127.0.0.1:1025 by default, the
address the notifications service sends to) and keeps every message it receives as an
.eml file in NOTIFICATIONS_DEV_SMTP_DIR (var/dev-mail/). Nothing is relayed anywhere.
Refuses to start in production and on a non-loopback address.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ipaddress
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from services.notifications.settings import NotificationsSettings
from services.shared.settings import Environment

log = logging.getLogger(__name__)


class FolderHandler:
    """aiosmtpd handler: every accepted message becomes `<ns>-<uuid>.eml` in the folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        temporary = self.folder / f".{name}.tmp"
        await asyncio.to_thread(temporary.write_bytes, content)
        await asyncio.to_thread(os.replace, temporary, self.folder / name)
        log.info("message caught", extra={"fields": {"file": name, "bytes": len(content)}})
        return "250 Message accepted for delivery"


@dataclass(frozen=True, slots=True)
class CaughtMessage:
    file: str
    to: str
    subject: str
    text: str


def read_caught(folder: Path, limit: int) -> list[CaughtMessage]:
    """The newest messages the catcher kept, newest first."""
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.eml"), reverse=True)[:limit]
    caught: list[CaughtMessage] = []
    for path in files:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        caught.append(CaughtMessage(path.name, str(message["To"]), str(message["Subject"]), str(text)))
    return caught


def check_allowed(settings: NotificationsSettings) -> None:
    if settings.environment is Environment.PRODUCTION:
        raise SystemExit("the SMTP catcher is a development tool: refused in production")
    try:
        loopback = settings.smtp_host == "localhost" or ipaddress.ip_address(settings.smtp_host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit("the SMTP catcher listens on a loopback address only")


async def start_catcher(host: str, port: int, folder: Path) -> asyncio.Server:
    handler = FolderHandler(folder)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: SMTP(handler, hostname="dev-smtp.localhost"), host, port)


async def serve(settings: NotificationsSettings) -> None:
    check_allowed(settings)
    server = await start_catcher(settings.smtp_host, settings.smtp_port, settings.dev_smtp_dir)
    port = server.sockets[0].getsockname()[1]
    print(f"dev SMTP catcher on {settings.smtp_host}:{port}, messages in {settings.dev_smtp_dir}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    from services.shared.logging import configure_logging

    settings = NotificationsSettings()
    configure_logging("dev-smtp", settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
