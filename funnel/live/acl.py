"""Who may do what in the online store: one Redis ACL user per role, each allowed only the commands
its writer or reader sends (the scripts' own commands included: Redis checks those against the
caller too), on the `funnel:` keys only. No role may FLUSHALL, CONFIG SET, DEBUG or load a MODULE;
the default user is off, so a caller without a password can do nothing.

`acl_file` writes the file Redis loads (`--aclfile`), with SHA-256 digests of the passwords, never
the passwords; each service reads its own password from a file (`--state-store-password-file`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

# What each script of funnel/live/store.py runs, beside the call that runs it.
_SCRIPTS = ("evalsha", "eval", "script|load", "ping")
# What a cluster client sends beside: the slots map, the command table (to find a command's keys)
# and ASKING while a slot migrates. None of them reads or writes data.
_CLUSTER = ("cluster|slots", "command", "asking")
_READ_STATE = ("zrange", "zrevrange", "zrevrangebyscore")
_WRITE_STATE = ("zadd", "zremrangebyscore", "zremrangebyrank", "pexpire")
_LOG = ("xadd", "xtrim", "xlen", "incr", "hget")
ROLES: dict[str, tuple[str, ...]] = {
    # Reads a user's live state; records what it served (the served set and the log).
    "gateway": (*_SCRIPTS, *_CLUSTER, *_READ_STATE, *_WRITE_STATE, *_LOG),
    # Records events (idempotency keys, quotas, state, the log), publishes the log's bounds, and
    # checks durability, memory and the log's fill.
    # WAIT: replicas confirm a batch before it is acknowledged (--replica-acks).
    "events": (
        *_SCRIPTS, *_CLUSTER, *_WRITE_STATE, *_LOG, "get", "set", "incrby", "hset", "config|get", "info", "wait"
    ),
    # Reads the log from its checkpoint and moves the checkpoint (training.export_events).
    "export": (*_SCRIPTS, *_CLUSTER, "xrange", "hgetall", "hget", "hset"),
}


def acl_rule(role: str, password: str) -> str:
    commands = " ".join(f"+{command}" for command in ROLES[role])
    digest = hashlib.sha256(password.encode()).hexdigest()
    return f"user {role} on #{digest} ~funnel:* resetchannels -@all {commands}"


def acl_file(passwords: Mapping[str, str]) -> str:
    """The ACL file for the roles in `passwords`, the default user off."""
    return "\n".join(["user default off", *(acl_rule(role, password) for role, password in passwords.items())]) + "\n"
