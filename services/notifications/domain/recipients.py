"""Recipient addresses: validation, normalisation, the keyed hash kept after erasure, masks."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

import phonenumbers

from services.notifications.domain.catalog import Channel
from services.shared.errors import InvalidArgument
from services.shared.logging import mask_email, mask_phone

MAX_EMAIL = 254
# Practical address syntax: no spaces, quotes, angle brackets or line breaks (no header
# injection); a domain with at least one dot.
EMAIL = re.compile(
    r"[^\s@<>()\[\],;:\"\\]{1,64}@(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
SMS_NUMBER_TYPES = frozenset(
    {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
)


@dataclass(frozen=True, slots=True)
class Recipient:
    channel: Channel
    # What delivery uses: E.164 for SMS, the address as given (trimmed) for email.
    address: str
    # Stable form for the keyed hash: E.164, or the address lower-cased.
    normalised: str

    @property
    def masked(self) -> str:
        return mask_phone(self.address) if self.channel is Channel.SMS else mask_email(self.address)


def phone_recipient(value: str) -> Recipient:
    try:
        number = phonenumbers.parse(value.strip(), None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidArgument("phone_number must be an international number such as +33612345678") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidArgument("phone_number is not a valid number")
    if phonenumbers.number_type(number) not in SMS_NUMBER_TYPES:
        raise InvalidArgument("phone_number must be a mobile number to receive SMS")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return Recipient(Channel.SMS, e164, e164)


def email_recipient(value: str) -> Recipient:
    address = value.strip()
    if len(address) > MAX_EMAIL or not EMAIL.fullmatch(address):
        raise InvalidArgument("email is not a valid address")
    return Recipient(Channel.EMAIL, address, address.lower())


def recipient_for(channel: Channel, phone_number: str | None, email: str | None) -> Recipient:
    if channel is Channel.SMS:
        if phone_number is None:
            raise InvalidArgument("an SMS needs recipient.phone_number")
        return phone_recipient(phone_number)
    if email is None:
        raise InvalidArgument("an email needs recipient.email")
    return email_recipient(email)


class RecipientHasher:
    """HMAC-SHA256 with a secret from settings: rate limits and erasure still work once the
    address is erased, and a leaked table cannot be reversed by hashing a phone book."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the recipient hash key is empty")
        self._key = key

    def __call__(self, recipient: Recipient) -> str:
        message = f"{recipient.channel.value}:{recipient.normalised}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()
