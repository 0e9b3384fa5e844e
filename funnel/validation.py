"""Input checks every process applies the same way; each failure is an InvalidArgument."""

from __future__ import annotations

import re
import time

from funnel.ids import MAX_ID_LENGTH
from funnel.runtime.errors import InvalidArgument
from funnel.v1 import common_pb2

MAX_ATTRIBUTES = 32
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_DEVICE = re.compile(r"^[a-z0-9_-]{1,32}$")
_EARLIEST = 946_684_800  # 2000-01-01: anything older is a client bug
_MAX_MATURITY = max(common_pb2.MaturityRating.values())


def check_id(value: str, what: str) -> None:
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{what} is longer than {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise InvalidArgument(f"{what} contains non-printable characters")


def check_ids(values: list[str] | tuple[str, ...], what: str, limit: int) -> None:
    if len(values) > limit:
        raise InvalidArgument(f"{what}: {len(values)} ids, at most {limit} allowed")
    for value in values:
        check_id(value, f"{what} entry")


def check_count(value: int, what: str, maximum: int) -> None:
    if value <= 0:
        raise InvalidArgument(f"{what} must be > 0, got {value}")
    if value > maximum:
        raise InvalidArgument(f"{what} must be <= {maximum}, got {value}")


def check_context(context: common_pb2.Context) -> None:
    if context.country and not _COUNTRY.match(context.country):
        raise InvalidArgument(f"context.country must be an ISO 3166-1 alpha-2 code like 'US', got {context.country!r}")
    if context.device and not _DEVICE.match(context.device):
        raise InvalidArgument("context.device must be 1-32 characters of a-z, 0-9, '_' or '-'")
    if context.HasField("timestamp"):
        seconds, nanos = context.timestamp.seconds, context.timestamp.nanos
        if not 0 <= nanos < 1_000_000_000:
            raise InvalidArgument("context.timestamp.nanos must be in [0, 1e9)")
        if seconds < _EARLIEST or seconds > time.time() + 86_400:
            raise InvalidArgument("context.timestamp must be between 2000-01-01 and tomorrow")
    if not 0 <= context.max_maturity <= _MAX_MATURITY:
        raise InvalidArgument(f"context.max_maturity {context.max_maturity} is not a MaturityRating")
    if len(context.attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"context.attributes has {len(context.attributes)} entries, at most {MAX_ATTRIBUTES}")
    for key, value in context.attributes.items():
        if not key or len(key) > 64 or len(value) > 256:
            raise InvalidArgument("context.attributes keys must be 1-64 characters and values at most 256")
