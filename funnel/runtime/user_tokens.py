"""End users bound to their own data: a client marked `bind_user` acts for a user only with that
user's signed token.

A client that runs on users' devices (an app) shares one credential across every install, so the
credential alone would let anyone holding it act for any user. Such a client is marked `bind_user`
in the credentials file, and each of its calls must also carry `x-user-token: <JWT>`, signed by the
identity provider with the configured key (`--user-token-key-file`: a PEM public key for RS256 or
ES256, or a shared secret for HS256), unexpired, for the configured audience and issuer. A missing or
invalid token is UNAUTHENTICATED at the door; a token whose subject is not the request's user (the
`user_id` of Recommend, of every event of RecordEvents) is PERMISSION_DENIED. The key file is re-read
when it changes, so a rotated key takes effect without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jwt

from funnel.runtime.errors import ConfigError
from funnel.runtime.files import file_digest

USER_TOKEN_KEY = "x-user-token"
# The users a request acts for, per method a bound client may call; any other method is closed to it.
METHOD_USERS: dict[str, Callable[[Any], set[str]]] = {
    "/funnel.v1.Recommender/Recommend": lambda request: {request.user_id},
    "/funnel.v1.Events/RecordEvents": lambda request: {event.user_id for event in request.events},
}
_CHECK_EVERY_S = 1.0


class UserTokens:
    """Verifies end-user tokens with the key in `path`, re-read when the file changes."""

    def __init__(
        self, path: str, algorithms: Iterable[str], audience: str = "", issuer: str = "", leeway_s: float = 30.0
    ) -> None:
        self.path = Path(path)
        self.algorithms = [a.strip() for a in algorithms if a.strip()]
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway_s = leeway_s
        if not self.algorithms:
            raise ConfigError("user_token_algorithms names no algorithm")
        self._key, self._seen = self._read(), file_digest(self.path)
        self._next_check = time.monotonic() + _CHECK_EVERY_S

    def _read(self) -> str:
        try:
            key = self.path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"user_token_key_file {self.path}: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"user_token_key_file {self.path} is empty")
        return key

    def _current_key(self) -> str:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + _CHECK_EVERY_S
            digest = file_digest(self.path)
            if digest and digest != self._seen:
                try:
                    self._key, self._seen = self._read(), digest
                except ConfigError:
                    pass  # a key being swapped in: the next check reads it
        return self._key

    def subject(self, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
        """The verified subject of the call's user token, or None (missing, unsigned, expired, for
        another audience or issuer, or without a subject)."""
        token = next((value for key, value in metadata or () if key == USER_TOKEN_KEY), None)
        if not isinstance(token, str):
            return None
        try:
            claims = jwt.decode(
                token,
                self._current_key(),
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError:
            return None
        subject = claims.get("sub")
        return subject if isinstance(subject, str) and subject else None
