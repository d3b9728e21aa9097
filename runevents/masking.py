"""Secrets kept out of every message: one function that masks what a URL or a DSN can carry.

A database URL may hold a password in its userinfo (`postgresql://carol:s3cret@db/events`), in its
query (`?password=...`, `?sslpassword=...`), or, inside a kafka URL, percent-encoded in the
`database=` option (`postgresql%3A%2F%2Fcarol%3As3cret%40db`). libpq's key-value form
(`host=db password=s3cret`) carries one too. Every error line, log line and printed setting goes
through `mask_secrets`, so a secret in any of those places prints as `***`.
"""

from __future__ import annotations

import logging
import re
from typing import Final

MASK: Final = "***"

# Query or key-value parameters whose values are secrets, plain or percent-encoded (`password%3D`).
_SECRET_KEYS: Final = r"(?:ssl)?password|passwd|pwd|secret|token|api[_-]?key|sasl[_.]?password"
# A value already masked (a secret passed by name) is left alone, with what follows it.
_PARAMETER: Final = re.compile(rf"(?i)(\b(?:{_SECRET_KEYS})\s*=\s*)(?!\*\*\*(?:[)\],;&\s'\"]|$))([^&\s'\"]+)")
_ENCODED_PARAMETER: Final = re.compile(
    rf"(?i)((?:^|[^a-z0-9%]|%3F|%26|%20)(?:{_SECRET_KEYS})%3D)((?:(?!%26)[^&\s'\"])+)"
)
# `scheme://user:password@`: the password is anything up to the first `@` that does not run into
# another URL (SQLAlchemy reads a password as `[^@]*`, so it may hold `/` and `?`).
_USERINFO: Final = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^\s/:@'\"]*:)((?:(?!://)[^@\s'\"])*)(@)")
# The same, percent-encoded inside another URL's query: `%3A%2F%2Fuser%3Apassword%40`.
_ENCODED_USERINFO: Final = re.compile(
    r"(?i)(%3A%2F%2F(?:(?!%3A|%40|%2F)[^\s/'\"&@])*%3A)((?:(?!%40)[^\s'\"&@])*)(%40)"
)


# A socket address as Python prints it: `('127.0.0.1', 5432)`, `('::1', 5432, 0, 0)`, or aiokafka's
# `('127.0.0.1', 9092, <AddressFamily.AF_INET: 2>)`.
_ADDRESS_TUPLE: Final = re.compile(r"\('([^'\s]+)', (\d+)(?:, (?:\d+|<[^<>]*>))*\)")


def mask_secrets(text: str, *secrets: str | None) -> str:
    """`text` with every password a URL or DSN in it carries, and each of `secrets`, shown as `***`."""
    for secret in sorted((secret for secret in secrets if secret), key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _USERINFO.sub(rf"\g<1>{MASK}\g<3>", text)
    text = _ENCODED_USERINFO.sub(rf"\g<1>{MASK}\g<3>", text)
    text = _PARAMETER.sub(rf"\g<1>{MASK}", text)
    return _ENCODED_PARAMETER.sub(rf"\g<1>{MASK}", text)


def error_line(error: BaseException, *secrets: str | None, named: bool = True) -> str:
    """One line saying what went wrong (after the error's name, if `named`), never a secret or a repr."""
    # A SQLAlchemy error wraps the driver's; its own text adds the statement and its parameters.
    orig = getattr(error, "orig", None)
    if isinstance(orig, BaseException):
        error = orig
    lines = str(error).strip().splitlines()
    name = type(error).__name__
    if not lines:
        return name
    # Some errors (aiokafka's) start their message with their own name already.
    line = lines[0] if not named or lines[0].startswith(name) else f"{name}: {lines[0]}"
    return mask_secrets(_ADDRESS_TUPLE.sub(_address, line), *secrets)


def _address(found: re.Match[str]) -> str:
    host, port = found.group(1), found.group(2)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MaskingFormatter(logging.Formatter):
    """A log formatter whose every line, traceback included, goes through `mask_secrets`."""

    def __init__(self, fmt: str | None = None, *, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(fmt)
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record with its secrets masked."""
        return mask_secrets(super().format(record), *self._secrets)
