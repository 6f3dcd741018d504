"""`python -m services.notifications.outbox`: print the latest SMS and emails of the dev stack.

Reads the development store of the notifications database (NOTIFICATIONS_DATABASE_URL,
var/notifications.db by default): what the development SMS channel stored and a copy of
every email delivered in development. `--caught` lists what the SMTP catcher received
instead (NOTIFICATIONS_DEV_SMTP_DIR). Development and test only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from sqlalchemy import select

from services.notifications.dev_smtp import read_caught
from services.notifications.models import DevelopmentMessage
from services.notifications.settings import NotificationsSettings
from services.shared.db import create_engine, session_factory


async def latest(
    settings: NotificationsSettings, channel: str | None, limit: int
) -> list[DevelopmentMessage]:
    engine = create_engine(settings.effective_database_url("notifications"))
    try:
        query = select(DevelopmentMessage).order_by(DevelopmentMessage.created_at.desc()).limit(limit)
        if channel:
            query = query.where(DevelopmentMessage.channel == channel)
        async with session_factory(engine)() as session:
            return list((await session.execute(query)).scalars())
    finally:
        await engine.dispose()


def format_message(message: DevelopmentMessage) -> str:
    when = message.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    head = f"{when}  {message.channel.upper():5}  {message.recipient}  [{message.template}]"
    lines = [head]
    if message.subject:
        lines.append(f"  Subject: {message.subject}")
    lines += [f"  {line}" for line in message.text_body.splitlines() if line.strip()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.notifications.outbox", description=__doc__)
    parser.add_argument("--channel", choices=("sms", "email"), help="only this channel")
    parser.add_argument("--limit", type=int, default=10, help="how many messages (default 10)")
    parser.add_argument("--caught", action="store_true", help="list the SMTP catcher's messages")
    args = parser.parse_args(argv)
    settings = NotificationsSettings()
    if not settings.is_development:
        print("the development outbox exists only in development and test", file=sys.stderr)
        return 2
    if args.caught:
        caught = read_caught(settings.dev_smtp_dir, args.limit)
        for item in caught:
            print(f"{item.file}  {item.to}  Subject: {item.subject}")
            print("\n".join(f"  {line}" for line in item.text.splitlines() if line.strip()))
            print()
        if not caught:
            print(f"no message caught in {settings.dev_smtp_dir}")
        return 0
    messages = asyncio.run(latest(settings, args.channel, args.limit))
    for message in messages:
        print(format_message(message))
        print()
    if not messages:
        print("no message yet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
