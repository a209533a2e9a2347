"""Files `serve` writes for workloads: the token (0600, no newline) and an EnvironmentFile."""

from __future__ import annotations

import os
from pathlib import Path


def write_secret_file(path: Path, secret: str) -> None:
    """Write `secret` with mode 0600 and no trailing newline, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secret.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def write_env_file(path: Path, url: str, token_file: Path) -> None:
    """An `EnvironmentFile=` for workload units: where Sentinel is and where its token is."""
    text = f"AWS_CONTAINER_CREDENTIALS_FULL_URI={url}\nAWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={token_file}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.chmod(temporary, 0o644)  # no secret in it: the token stays in the 0600 token file
    os.replace(temporary, path)
