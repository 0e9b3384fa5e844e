"""Throwaway certificate authorities and workload certificates for TLS tests, made with openssl."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc

# What a workload certificate is valid for: loopback by address and name, and the one name every
# Funnel process can be reached by when a test overrides the expected server name.
SUBJECT_ALT_NAMES = "IP:127.0.0.1,DNS:localhost,DNS:funnel.internal"


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path
    ca: Path  # the CA that signed it

    def env(self, require_client_cert: bool) -> dict[str, str]:
        """The FUNNEL_TLS_* settings of a process holding this identity."""
        return {
            "FUNNEL_TLS_CERT_FILE": str(self.cert),
            "FUNNEL_TLS_KEY_FILE": str(self.key),
            "FUNNEL_TLS_CA_FILE": str(self.ca),
            "FUNNEL_TLS_REQUIRE_CLIENT_CERT": "true" if require_client_cert else "false",
        }

    def credentials(self, present_cert: bool = True) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if present_cert else None,
            certificate_chain=self.cert.read_bytes() if present_cert else None,
        )


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_authority(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name} test CA",
    )  # fmt: skip
    return cert, key


def issue(directory: Path, authority: tuple[Path, Path], name: str) -> Identity:
    """A certificate for `name`, usable to serve and to call (serverAuth and clientAuth)."""
    ca_cert, ca_key = authority
    key, request, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        f"subjectAltName={SUBJECT_ALT_NAMES}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(extensions),
    )  # fmt: skip
    return Identity(cert, key, ca_cert)
