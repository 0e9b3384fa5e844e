"""Caller authentication by bearer token: `authorization: Bearer <token>` in the call's metadata.

Tokens come from a file (in Kubernetes, a mounted Secret), never from flags or environment
variables, which show up in process listings and pod specs. Only their SHA-256 digests are kept in
memory and compared in constant time; no token is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from funnel.runtime.errors import ConfigError

_PREFIX = "bearer "


class BearerTokens:
    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(token.encode()).digest() for token in tokens]
        if not self._digests:
            raise ConfigError("the auth token file lists no token")

    def accepts(self, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value[: len(_PREFIX)].lower() == _PREFIX:
                offered = hashlib.sha256(value[len(_PREFIX) :].strip().encode()).digest()
                # Every digest compared, match or not: the time taken says nothing about the tokens.
                return any([hmac.compare_digest(offered, digest) for digest in self._digests])
        return False


def load_tokens(path: str) -> BearerTokens:
    """One token per line; blank lines and lines starting with '#' are skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"auth_token_file {path}: {exc.strerror}") from None
    return BearerTokens(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
