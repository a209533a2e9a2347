"""`sentinel exec --attach`: run a command on the credentials of a `sentinel serve` already running.

Quick by construction (issue 14): no event loop, no AWS SDK, no STS call in this process, and only
standard-library imports besides Sentinel's leaves. The daemon's env file (`serve --env-file`) says
where it listens and where its token is; the file is trusted only if no one but root and us could
have written it (`files.read_env_file`: it decides where the token is sent), the URL must be http
on loopback, and one `GET /healthz` must show a Sentinel there. Then this process becomes the
command (`os.execvpe`): signals reach it directly and its exit code is the one the caller sees.
The token is never read here: the child's SDK reads the file named by
`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (and rereads it when it refreshes), so the secret is in
no argv and no environment.

Which env file (DESIGN.md §6): `--env-file`, `SENTINEL_ENV_FILE` or `env_file` in `--config`, as
`serve` reads them. With a profile asked for (`--profile`, `SENTINEL_PROFILE`, `profile` in the
file), `<directory of that file>/<profile>.env` if it exists (where `serve` writes the env file of
each profile beside the default one's), else the file itself; either way the file and the daemon
must agree that they serve that profile (below, `_session_id`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from sentinel import child
from sentinel.errors import ConfigError, SentinelError
from sentinel.files import read_env_file
from sentinel.loopback import loopback_address
from sentinel.profiles import PROFILE_PATH_PREFIX
from sentinel.sessions.model import InvalidSessionId, validate_session_id

URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
TOKEN_FILE = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"  # noqa: S105 - a variable name, not a secret
# Optional lines of an env file: the region its profile uses, and which profile it serves.
REGION = "AWS_REGION"
PROFILE = "SENTINEL_PROFILE"

# One question to a process on loopback: it answers in microseconds or not at all.
HEALTH_TIMEOUT = 2.0
_HEALTH_MAX_BYTES = 1024 * 1024
# Python ignores these at startup and an exec'd program would inherit that: `yes | head` must end
# on SIGPIPE as it does from a shell (subprocess resets them the same way, restore_signals=True).
_RESTORED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


class DaemonUnavailable(SentinelError):
    """Nothing that looks like `sentinel serve` answers where the env file points (exit 69)."""


@dataclass(frozen=True, slots=True)
class Daemon:
    """What an env file says about a running server, checked."""

    env_file: Path
    url: str  # the credentials URL, its host the loopback literal
    address: str
    port: int
    path: str
    token_file: Path
    region: str | None
    profile: str | None  # SENTINEL_PROFILE, if the file names one


def attach(
    argv: list[str],
    *,
    env_file: Path | None,
    profile: str | None,
    region: str | None,
    environ: Mapping[str, str] = os.environ,
) -> NoReturn:
    """Replace this process with `argv`, its credentials served by the daemon `env_file` names.

    Raises `ConfigError` (no env file, one not to be trusted, a profile it does not serve),
    `DaemonUnavailable`, or `CommandNotFound` / `CommandNotExecutable`; otherwise never returns."""
    child.refuse_nested(environ)
    if env_file is None:
        raise ConfigError(
            "exec --attach: no env file: give --env-file PATH (or SENTINEL_ENV_FILE, or env_file in "
            "--config), the file `sentinel serve --env-file PATH` writes"
        )
    daemon = read_daemon(choose_env_file(env_file, profile))
    session_id = _session_id(daemon, fetch_health(daemon), profile)
    env = child.child_environment(
        environ,
        marker=session_id,
        region=daemon.region or region,
        credentials={URI: daemon.url, TOKEN_FILE: str(daemon.token_file)},
    )
    exec_command(argv, env)


def choose_env_file(env_file: Path, profile: str | None) -> Path:
    """The env file of `profile`: `<profile>.env` beside `env_file` if it exists, else `env_file`."""
    # A name with a `/` or a leading dot cannot be a profile serve writes a file of its own for.
    if profile and "/" not in profile and not profile.startswith("."):
        beside = env_file.parent / f"{profile}.env"
        if beside.exists():
            return beside
    return env_file


def read_daemon(env_file: Path) -> Daemon:
    """Read and check an env file: trusted (`read_env_file`), http on loopback, absolute token file."""
    try:
        variables = read_env_file(env_file)
    except FileNotFoundError:
        raise ConfigError(
            f"exec --attach: {env_file}: no such env file; is `sentinel serve --env-file {env_file}` running?"
        ) from None
    except OSError as exc:
        raise ConfigError(f"exec --attach: {env_file}: cannot read ({exc.strerror or exc})") from None
    for key in (URI, TOKEN_FILE):
        if not variables.get(key):
            raise ConfigError(f"exec --attach: {env_file}: no {key}")
    address, port, path = _loopback_url(variables[URI], env_file)
    token_file = Path(variables[TOKEN_FILE])
    if not token_file.is_absolute():
        raise ConfigError(f"exec --attach: {env_file}: {TOKEN_FILE} is not an absolute path")
    return Daemon(
        env_file=env_file,
        url=f"http://{_host(address)}:{port}{path}",
        address=address,
        port=port,
        path=path,
        token_file=token_file,
        region=variables.get(REGION) or None,
        profile=variables.get(PROFILE) or None,
    )


def _loopback_url(url: str, env_file: Path) -> tuple[str, int, str]:
    """(loopback literal, port, path) of an http URL on loopback; anything else is refused.

    The workload's SDK sends the token to this URL: a host name is resolved to the literal here
    (`localhost` is 127.0.0.1, whatever a hosts file says), and the URL handed on names it."""
    refused = f"exec --attach: {env_file}: refusing {URI}={url[:200]!r}"
    parts = urlsplit(url)
    try:
        port = parts.port
        address = loopback_address(parts.hostname or "")
    except ValueError as exc:
        raise ConfigError(f"{refused}: {exc}") from None
    if parts.scheme != "http" or parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{refused}: not a plain http:// URL")
    if port is None:
        raise ConfigError(f"{refused}: no port")
    return address, port, parts.path or "/"


def fetch_health(daemon: Daemon, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
    """The daemon's `/healthz` body; `DaemonUnavailable` if nothing answers or it is not Sentinel."""
    health_url = f"http://{_host(daemon.address)}:{daemon.port}/healthz"
    try:
        answer = _get(daemon.address, daemon.port, "/healthz", timeout)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise DaemonUnavailable(
            f"exec --attach: nothing answers at {health_url} ({reason}); is `sentinel serve` running? "
            f"(env file {daemon.env_file})"
        ) from None
    health: Any = None
    if answer is not None and answer[0] == 200 and answer[1].startswith("application/json"):
        try:
            health = json.loads(answer[2])
        except ValueError:
            health = None
    if not isinstance(health, dict) or not _is_session_id(_section(health, "session").get("id")):
        seen = f"HTTP {answer[0]}" if answer is not None else "no HTTP answer"
        raise DaemonUnavailable(
            f"exec --attach: {health_url} does not look like Sentinel ({seen}); "
            f"is `sentinel serve` running there? (env file {daemon.env_file})"
        )
    return health


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _get(address: str, port: int, path: str, timeout: float) -> tuple[int, str, bytes] | None:
    """One HTTP/1.1 GET on a fresh connection: (status, content type, body), None if what came
    back is not HTTP; `OSError` if nothing answers within `timeout`.

    A socket and a few lines rather than `http.client`, whose import (email, ssl) alone would
    cost more than this whole command takes otherwise."""
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: {_host(address)}:{port}\r\nConnection: close\r\n\r\n"
    # A socket of the literal's family: create_connection would resolve it (and load the idna codec).
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as sock:
        sock.settimeout(timeout)
        sock.connect((address, port))
        sock.sendall(request.encode())
        data = b""
        length: int | None = None
        head_end = -1
        while len(data) <= _HEALTH_MAX_BYTES:
            if head_end >= 0 and length is not None and len(data) - head_end >= length:
                break
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if head_end < 0 and (found := data.find(b"\r\n\r\n")) >= 0:
                head_end = found + 4
                length = _content_length(data[:head_end])
    head = data[:head_end].decode("latin-1").split("\r\n") if head_end >= 0 else [""]
    version, _, rest = head[0].partition(" ")
    code = rest.split(" ", 1)[0]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        return None
    content_type = ""
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            content_type = value.strip().lower()
    body = data[head_end:]
    return int(code), content_type, body[:length] if length is not None else body


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


def _section(mapping: Any, key: str) -> dict[str, Any]:
    """`mapping[key]` if both are JSON objects, else {}: unknown shapes are ignored, not trusted."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, dict) else {}


def _is_session_id(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        validate_session_id(value)
    except InvalidSessionId:
        return False
    return True


def _session_id(daemon: Daemon, health: dict[str, Any], profile: str | None) -> str:
    """The session the child's credentials belong to (its AWS_SENTINEL), once the env file and
    the daemon agree on the profile.

    `/` is the default profile: the top-level `session` of /healthz. `/profiles/NAME` is `NAME`
    in its `profiles` section. A profile asked for must be the one the file names (its
    SENTINEL_PROFILE or its path); on `/`, if the daemon lists its profiles, the asked one must
    be the default among them. A single-profile daemon does not name its profile: its env file
    is taken to serve the profile asked for."""
    where = f"exec --attach: {daemon.env_file}"
    if profile and daemon.profile and daemon.profile != profile:
        raise ConfigError(f"{where} serves profile {daemon.profile!r}, not {profile!r}")
    served = _section(health, "profiles")
    if daemon.path == "/":
        session_id: str = _section(health, "session")["id"]
        if profile and served and _section(_section(served, profile), "session").get("id") != session_id:
            raise ConfigError(
                f"{where} serves the default profile of {daemon.url}, not {profile!r}"
                f" (the server's profiles: {', '.join(sorted(served))})"
            )
        return session_id
    if daemon.path.startswith(PROFILE_PATH_PREFIX):
        name = daemon.path.removeprefix(PROFILE_PATH_PREFIX)
        if profile and name != profile:
            raise ConfigError(f"{where} serves profile {name!r} ({daemon.url}), not {profile!r}")
        candidate = _section(_section(served, name), "session").get("id")
        if not _is_session_id(candidate):
            raise ConfigError(f"{where}: the server at {daemon.url} does not serve profile {name!r}")
        return str(candidate)
    raise ConfigError(f"{where}: {daemon.url} is not a path Sentinel serves credentials on")


def exec_command(argv: list[str], env: dict[str, str]) -> NoReturn:
    """Become `argv` (searched in the child's PATH) with `env`; `CommandNotFound` (127) or
    `CommandNotExecutable` (126) if it cannot start."""
    previous = {signum: signal.signal(signum, signal.SIG_DFL) for signum in _RESTORED_SIGNALS}
    try:
        # No shell: argv is the command exactly as the user gave it after `--`.
        os.execvpe(argv[0], argv, env)  # noqa: S606
    except OSError as exc:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        raise child.command_error(argv[0], exc) from None
