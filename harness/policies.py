"""Policy files the subprocess tests hand to `sentinel`: allow, deny and server-only for `demo`."""

from __future__ import annotations

ALLOW_POLICY = """version: "1"
rules:
  - name: allow-demo
    effect: allow
    conditions:
      profiles: [demo]
      mode: [server, cli]
    reason: demo profile allowed
"""

DENY_POLICY = """version: "1"
rules:
  - name: deny-demo
    effect: deny
    conditions:
      profiles: [demo]
    reason: demo profile is closed for maintenance
"""

SERVER_ONLY_POLICY = """version: "1"
rules:
  - name: server-only
    effect: require_server
    conditions:
      profiles: [demo]
    reason: demo profile, server mode only
"""
