"""Sentinel: a policy-gated AWS credential server (container-credentials protocol)."""

__version__ = "0.1.0"
