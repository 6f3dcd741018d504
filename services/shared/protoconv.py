"""Conversions between protobuf enums/timestamps and domain types.

Proto enum values follow buf style (`FILING_CAPACITY_SELF`), domain enums use the bare
member name (`FilingCapacity.SELF`); the mapping is by name, so adding a value on both
sides is all a new member needs.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

E = TypeVar("E", bound=Enum)


def _prefix(pb_enum: Any) -> str:
    name: str = pb_enum.DESCRIPTOR.name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper() + "_"


def to_pb_enum(pb_enum: Any, member: Enum) -> Any:
    """The proto enum number (typed Any: each generated enum has its own ValueType)."""
    value: int = pb_enum.Value(_prefix(pb_enum) + member.name)
    return value


def from_pb_enum(pb_enum: Any, domain: type[E], value: int) -> E | None:
    """None for *_UNSPECIFIED or an unknown number (callers turn that into INVALID_ARGUMENT)."""
    try:
        name: str = pb_enum.Name(value)
    except ValueError:
        return None
    bare = name.removeprefix(_prefix(pb_enum))
    return domain.__members__.get(bare)


def to_timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def pb_enum_to_code(pb_enum: Any, value: int) -> str:
    """`CASE_STATUS_IN_REVIEW` -> `in_review` (the API's spelling)."""
    name: str = pb_enum.Name(value)
    return name.removeprefix(_prefix(pb_enum)).lower()


def code_to_pb_enum(pb_enum: Any, code: str) -> Any:
    """`in_review` -> CASE_STATUS_IN_REVIEW; unknown codes -> *_UNSPECIFIED (0)."""
    try:
        value: int = pb_enum.Value(_prefix(pb_enum) + code.upper())
    except ValueError:
        return 0
    return value
