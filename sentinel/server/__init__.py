"""The HTTP endpoint: credentials over the AWS container-credentials protocol, on loopback only."""

from sentinel.server.limits import ServerConfigError, ServerLimits
from sentinel.server.listener import DEFAULT_SHUTDOWN_GRACE, Server, start_server
from sentinel.server.service import CredentialService, Reply
from sentinel.server.state import ServerStatistics

__all__ = [
    "DEFAULT_SHUTDOWN_GRACE",
    "CredentialService",
    "Reply",
    "Server",
    "ServerConfigError",
    "ServerLimits",
    "ServerStatistics",
    "start_server",
]
