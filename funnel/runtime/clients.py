"""Who is calling: named clients with scopes, from a credentials file (in Kubernetes, a mounted Secret).

One credential a line; `#` starts a comment:

    # client       scopes                   credential (SHA-256 of the token)   options
    web-frontend   recommend,record_events  sha256:5e8848…                      rate=200 burst=400
    mobile-app     recommend,record_events  sha256:9f86d0…                      bind_user
    operator       admin                    sha256:2c26b4…

The file holds only digests, so reading it reveals no token; a client presents its token as
`authorization: Bearer <token>`. A name may have several lines: during a rotation the old and the
new token are both accepted until the old line goes. The file is re-read when it changes (no
restart); a file that does not parse is refused and the clients already loaded keep their access.
`python -m deploy credentials new NAME --scopes …` makes a token and its line.

Scopes: `recommend` (the Recommender API), `record_events` (the Events API), `admin` (reloads and
any method not listed in METHOD_SCOPES). Options: `rate` (calls a second) and `burst` (calls at
once) override the process's default quota for the client; `bind_user` requires a signed end-user
token whose subject is the request's user (`funnel/runtime/user_tokens.py`).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from funnel.runtime.errors import ConfigError
from funnel.runtime.files import file_digest
from funnel.runtime.metrics import CREDENTIAL_RELOADS

log = logging.getLogger("funnel.clients")

RECOMMEND, RECORD_EVENTS, ADMIN = "recommend", "record_events", "admin"
SCOPES = (RECOMMEND, RECORD_EVENTS, ADMIN)
# The scope each method needs; a method not listed needs `admin` (a new method is closed until named).
METHOD_SCOPES = {
    "/funnel.v1.Recommender/Recommend": RECOMMEND,
    "/funnel.v1.Events/RecordEvents": RECORD_EVENTS,
}
# The client of the call being served (None: no credentials file, every caller is anonymous).
CALLER: contextvars.ContextVar[Client | None] = contextvars.ContextVar("funnel_caller", default=None)
ANONYMOUS = "anonymous"  # the name events are stored under when a process checks no credentials

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_PREFIX = "bearer "


@dataclass(frozen=True)
class Client:
    name: str
    scopes: frozenset[str]
    rate_per_s: float | None = None  # None: the process's default quota
    burst: int | None = None
    bind_user: bool = False

    def may_call(self, method: str) -> bool:
        return METHOD_SCOPES.get(method, ADMIN) in self.scopes


def token_digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class Clients:
    """Token digests to clients. A lookup by SHA-256 digest tells a caller nothing about the tokens
    through its timing: to hit an entry they would need a preimage."""

    def __init__(self, by_digest: dict[str, Client]) -> None:
        if not by_digest:
            raise ConfigError("the credentials file names no client")
        self._by_digest = by_digest

    @property
    def names(self) -> list[str]:
        return sorted({client.name for client in self._by_digest.values()})

    def identify(self, metadata: Iterable[tuple[str, Any]] | None) -> Client | None:
        """The client whose token the call's `authorization: Bearer` metadata carries, or None."""
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value[: len(_PREFIX)].lower() == _PREFIX:
                return self._by_digest.get(token_digest(value[len(_PREFIX) :].strip()))
        return None


def new_credential(name: str, scopes: Iterable[str], options: Iterable[str] = ()) -> tuple[str, str]:
    """A fresh token and its line for the credentials file (checked as the file will be read). The
    token is shown once, to its client; the file keeps only its digest."""
    token = secrets.token_urlsafe(32)
    line = " ".join([name, ",".join(scopes), token_digest(token), *options])
    parse_clients(line, "new credential")
    return token, line


def parse_clients(text: str, source: str = "credentials file") -> Clients:
    """Every problem at once, by line; a token is never echoed (the file holds none)."""
    by_digest: dict[str, Client] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        words = line.split()
        if len(words) < 3:
            problems.append(f"{where}: expected 'name scopes sha256:<digest> [options]'")
            continue
        name, scope_list, credential, *options = words
        scopes = frozenset(s for s in scope_list.split(",") if s)
        match = _DIGEST.match(credential)
        if not _NAME.match(name):
            problems.append(f"{where}: client name {name!r} must be 1-64 of A-Z a-z 0-9 . _ -")
        if not scopes or scopes - set(SCOPES):
            problems.append(f"{where}: scopes must be among {', '.join(SCOPES)} (got {scope_list!r})")
        if match is None:
            problems.append(f"{where}: the credential must be sha256:<64 lowercase hex digits>, a token's digest")
        settings, problem = _options(options)
        if problem:
            problems.append(f"{where}: {problem}")
        if match is None or problem:
            continue
        if credential in by_digest:
            problems.append(f"{where}: this credential is already listed (for {by_digest[credential].name})")
            continue
        by_digest[credential] = Client(name, scopes, **settings)
    if problems:
        raise ConfigError("; ".join(problems))
    return Clients(by_digest)


def _options(options: list[str]) -> tuple[dict[str, Any], str | None]:
    settings: dict[str, Any] = {}
    for option in options:
        key, _, value = option.partition("=")
        try:
            if key == "bind_user" and not value:
                settings["bind_user"] = True
            elif key == "rate" and float(value) > 0:
                settings["rate_per_s"] = float(value)
            elif key == "burst" and int(value) > 0:
                settings["burst"] = int(value)
            else:
                return settings, f"unknown or invalid option {option!r} (rate=<calls/s>, burst=<calls>, bind_user)"
        except ValueError:
            return settings, f"option {option!r} needs a positive number"
    return settings, None


def load_clients(path: str) -> Clients:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"clients_file {path}: {exc.strerror}") from None
    return parse_clients(text, path)


class ClientsFile:
    """The credentials file, re-read when its bytes change (a rotated Secret). A file that does not
    parse is refused, logged and counted, and the clients already loaded keep their access."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._seen = file_digest(self.path)
        self.current = load_clients(path)  # at start, a bad file is a ConfigError: the process exits

    def __call__(self) -> Clients:
        return self.current

    async def watch(self, poll_s: float) -> None:
        """Poll every `poll_s` until cancelled."""
        while True:
            await asyncio.sleep(poll_s)
            digest = file_digest(self.path)
            if digest == self._seen:
                continue
            self._seen = digest
            try:
                self.current = load_clients(str(self.path))
            except ConfigError as exc:
                CREDENTIAL_RELOADS.labels("rejected").inc()
                log.error("credentials file rejected; the loaded clients keep their access", extra={"error": str(exc)})
                continue
            CREDENTIAL_RELOADS.labels("loaded").inc()
            log.info("credentials reloaded", extra={"clients": self.current.names})
