"""Throwaway TLS certificates for tests: a self-signed certificate for one IP address, made by
Debian's openssl(1) (the real tool an operator would use), so a test server can speak HTTPS
and a test client can trust exactly it (SSL_CERT_FILE=cert)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["self_signed"]


def self_signed(directory: Path, ip: str, name: str = "shoal-test") -> tuple[Path, Path]:
    """Write `name`.crt and `name`.key (0600) in `directory` for a P-256 certificate valid two
    days for the address `ip` (subjectAltName IP). Returns (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=IP:{ip}"],
        check=True, capture_output=True, timeout=30,
    )
    os.chmod(key, 0o600)
    return cert, key
