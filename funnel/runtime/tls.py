"""TLS and mutual TLS for every hop, from certificate paths in the settings.

One workload identity per process (certificate + key) serves its port and is presented as the
client certificate on its calls, as a service mesh would issue it; one CA bundle says whom to
trust. Files are read once at start-up: a missing or unreadable file stops the process (exit 2)
instead of silently serving plaintext. Key material is never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from funnel.runtime.config import ServerSettings
from funnel.runtime.errors import ConfigError


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path!r} cannot be read: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{what} {path!r} is not PEM")
    return data


@dataclass(frozen=True)
class Tls:
    """The PEM material a process serves and calls with; empty fields mean plaintext."""

    cert: bytes = b""
    key: bytes = b""
    ca: bytes = b""
    require_client_cert: bool = False
    server_name: str = ""

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Tls:
        """Read the files of settings `load_settings` already validated (pairs, mutual TLS needs)."""
        return cls(
            cert=_read(settings.tls_cert_file, "tls_cert_file") if settings.tls_cert_file else b"",
            key=_read(settings.tls_key_file, "tls_key_file") if settings.tls_key_file else b"",
            ca=_read(settings.tls_ca_file, "tls_ca_file") if settings.tls_ca_file else b"",
            require_client_cert=settings.tls_require_client_cert,
            server_name=settings.tls_server_name,
        )

    @property
    def serves_tls(self) -> bool:
        return bool(self.cert)

    @property
    def calls_with_tls(self) -> bool:
        return bool(self.ca)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.ca if self.require_client_cert else None,
            require_client_auth=self.require_client_cert,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key or None, certificate_chain=self.cert or None
        )

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


PLAINTEXT = Tls()
