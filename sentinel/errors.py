"""The one error hierarchy of Sentinel.

Every error knows its one-line message. Mapping to HTTP status happens in `server/`, mapping to
exit codes in `cli.py`; nowhere else.
"""

from __future__ import annotations


class SentinelError(Exception):
    """Base of every error Sentinel raises on purpose; `str()` is a single safe line."""

    def __init__(self, message: str) -> None:
        # Messages are user-facing and end up in logs: keep them to one line, always.
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(SentinelError):
    """Invalid configuration (flags, environment, TOML file); exit 78 (EX_CONFIG)."""


class PolicyError(SentinelError):
    """A policy that cannot be loaded or does not validate."""


class CredentialError(SentinelError):
    """Base or role credentials could not be obtained; the message never carries upstream text."""
