"""The Secrets the overlays mount, made by the deploy command rather than by hand.

    python -m deploy credentials new web-frontend --scopes recommend,record_events --file clients.txt
    python -m deploy secrets --overlay prod --clients clients.txt | kubectl apply -f -
    python -m deploy secrets --overlay prod --clients clients.txt --apply

`credentials new` prints a client's token once and appends its line (the token's digest) to the
credentials file. `secrets` writes:
- `funnel-clients`: that file, which the gateway and the events service re-read when it changes (a
  new client or a rotation needs no restart);
- `funnel-store-acl`: the store's users (funnel/live/acl.py), with SHA-256 digests of fresh passwords;
- `funnel-store-gateway`, `funnel-store-events`, `funnel-store-export`: each role's password.
Running it again rotates the store passwords: Redis reads its users when it starts, so restart the
StatefulSet and the gateway and events Deployments after applying them. The TLS identities of the
`prod` overlay (`funnel-tls-<workload>`) and the CA the store's clients trust (`funnel-store-ca`)
come from your certificate authority (k8s/README.md).
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

from deploy.render import Object
from funnel.live.acl import ROLES, acl_file
from funnel.runtime.clients import load_clients


def _secret(name: str, namespace: str, data: dict[str, str]) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "funnel"}},
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }


def issued_by_your_ca(secret_name: str) -> bool:
    """Certificates and CAs: an operator's PKI issues them, never this command."""
    return secret_name.startswith("funnel-tls-") or secret_name == "funnel-store-ca"


def funnel_secrets(namespace: str, clients_file: Path) -> list[Object]:
    """Every Secret the overlays mount but TLS's, with fresh store passwords."""
    load_clients(str(clients_file))  # refused here, by line, rather than by every pod at start
    passwords = {role: secrets.token_urlsafe(32) for role in ROLES}
    return [
        _secret("funnel-clients", namespace, {"clients": clients_file.read_text()}),
        _secret("funnel-store-acl", namespace, {"users.acl": acl_file(passwords)}),
        *(_secret(f"funnel-store-{role}", namespace, {"password": password}) for role, password in passwords.items()),
    ]
