"""`ServerConfig`: one frozen value built from flags > `SENTINEL_*` environment > TOML file > defaults.

Every option is declared once in `OPTIONS` (its flag, type and default); the CLI builds its flags
from the same table, so the three sources cannot drift apart. Invalid input raises `ConfigError`
whose message names the option and the source, on one line (the CLI maps it to exit 78).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from sentinel.errors import ConfigError

LogFormat = Literal["text", "json"]

_DURATION_PART = re.compile(r"(\d+)(h|m|s)")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_INSTANCE_ID = re.compile(r"[A-Za-z0-9_.@=+-]{1,64}")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_SSM_NAME = re.compile(r"/?[A-Za-z0-9_.\-/]{1,2048}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
_PROFILE = re.compile(r"[\w+=,.@:/-]{1,128}")
# One year: far above any interval or lifetime Sentinel accepts, far below timedelta's limit.
_MAX_DURATION_SECONDS = 365 * 24 * 3600.0


def parse_duration(text: str | int | float) -> timedelta:
    """`900`, `900s`, `15m`, `1h`, `1h30m` -> timedelta. Raises ValueError with a short reason."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"{text!r} is not a duration (use e.g. 900, 15m, 1h, 1h30m)")
        return _bounded(text)
    if not isinstance(text, str):
        # TOML can hand us a bool, list or table here; say so instead of failing on .strip().
        raise ValueError(f"expected a duration such as 15m or 1h, not {type(text).__name__}")
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return _bounded(float(value))
    total = 0
    position = 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        amount, unit = int(match.group(1)), match.group(2)
        total += amount * {"h": 3600, "m": 60, "s": 1}[unit]
        position = match.end()
    if position != len(value) or not value:
        raise ValueError(f"{text!r} is not a duration (use e.g. 900, 15m, 1h, 1h30m)")
    return _bounded(total)


def _bounded(seconds: float) -> timedelta:
    # timedelta overflows (OverflowError, not ValueError) far beyond any sensible setting.
    if seconds > _MAX_DURATION_SECONDS:
        raise ValueError(f"{seconds:g} seconds is too long (at most {_MAX_DURATION_SECONDS:g})")
    return timedelta(seconds=seconds)


def _seconds(text: Any) -> float:
    return parse_duration(text).total_seconds()


def _duration(text: Any) -> timedelta:
    return parse_duration(text)


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{value!r} is not a whole number")
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{value!r} is not a whole number") from None
        if not low <= number <= high:
            raise ValueError(f"{number} is out of range {low}..{high}")
        return number

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"expected a {what}, not {type(value).__name__}")
        text = str(value)
        if regex.fullmatch(text) is None:
            raise ValueError(f"{text[:80]!r} is not a valid {what}")
        return text

    return parse


def _path(value: Any) -> Path:
    if not isinstance(value, str | Path) or not str(value) or "\x00" in str(value):
        raise ValueError("expected a file path")
    return Path(value).expanduser()


def _log_format(value: Any) -> str:
    text = value.lower() if isinstance(value, str) else repr(value)
    if text not in {"text", "json"}:
        raise ValueError(f"{value!r} must be text or json")
    return text


def _decision_log(value: Any) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ValueError("expected a file path or -")
    return value


def loopback_address(host: str) -> str:
    """The literal address to bind for `host`; anything but loopback is a ValueError.

    The one loopback check (DESIGN.md §6: the listener binds loopback only), used to validate
    `--host` and again by the server before it binds. "localhost" means 127.0.0.1, not whatever
    a resolver says: a hosts file that maps it elsewhere must not move the listener off loopback."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not a loopback address") from None
    if not address.is_loopback:
        raise ValueError(f"{host!r} is not a loopback address; Sentinel binds loopback only")
    return str(address)


def check_loopback_host(value: Any) -> str:
    """`--host`: a loopback literal (IPv6 may be bracketed) or localhost."""
    if not isinstance(value, str):
        raise ValueError(f"expected a loopback address, not {type(value).__name__}")
    return loopback_address(value.strip("[]"))


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration option: its field, flag, parser and default."""

    field: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    flag_kind: Literal["value", "switch"] = "value"
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return "SENTINEL_" + self.field.upper()


# The command-line surface of DESIGN.md §6. Names are fixed: users, scripts and the unit use them.
OPTIONS: tuple[Option, ...] = (
    Option("profile", _pattern(_PROFILE, "profile name"), None, "AWS profile with the base credentials"),
    Option("role_arn", _pattern(_ROLE_ARN, "role ARN"), None, "role to assume (else the profile's role_arn)"),
    Option("region", _pattern(_REGION, "AWS region"), None, "AWS region for STS, SSM and DynamoDB"),
    Option("policy_file", _path, None, "policy YAML file", metavar="PATH"),
    Option("policy_parameter", _pattern(_SSM_NAME, "SSM parameter name"), None, "policy in SSM"),
    Option("policy_refresh", _seconds, 30.0, "how often the policy is re-read (e.g. 30s)"),
    Option("host", check_loopback_host, "127.0.0.1", "loopback address to bind"),
    Option("port", _int_range(0, 65535), 0, "port to bind (0 = ephemeral)"),
    Option("token_file", _path, None, "where serve writes the token (mode 0600)", metavar="PATH"),
    Option("server_duration", _duration, timedelta(minutes=15), "lifetime of served credentials"),
    Option("server_instance_id", _pattern(_INSTANCE_ID, "server instance id"), None, "stable instance id"),
    Option("decision_log", _decision_log, None, "decision log file, or - for stderr", metavar="PATH|-"),
    Option("flush_interval", _seconds, 1.0, "session touch flush interval"),
    Option("queue_size", _int_range(1, 10_000_000), 10_000, "touch queue size"),
    Option("revocation_poll", _seconds, 2.0, "idle revocation poll interval"),
    Option("shutdown_timeout", _seconds, 5.0, "deadline for graceful shutdown"),
    Option("lazy", _bool, False, "do not prefetch credentials at startup", flag_kind="switch"),
    Option("env_file", _path, None, "write an EnvironmentFile= for workloads", metavar="PATH"),
    Option("log_format", _log_format, "text", "log format: text or json", metavar="text|json"),
    Option("session_table", _pattern(_TABLE_NAME, "DynamoDB table name"), None, "DynamoDB session table"),
    Option("session_db", _path, None, "SQLite session database", metavar="PATH"),
    Option("no_session_tracking", _bool, False, "do not track the session", flag_kind="switch"),
)
OPTIONS_BY_FIELD = {option.field: option for option in OPTIONS}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `serve` and `exec --server` need, validated."""

    profile: str | None = None
    role_arn: str | None = None
    region: str | None = None
    policy_file: Path | None = None
    policy_parameter: str | None = None
    policy_refresh: float = 30.0
    host: str = "127.0.0.1"
    port: int = 0
    token_file: Path | None = None
    server_duration: timedelta = timedelta(minutes=15)
    server_instance_id: str | None = None
    decision_log: str | None = None
    flush_interval: float = 1.0
    queue_size: int = 10_000
    revocation_poll: float = 2.0
    shutdown_timeout: float = 5.0
    lazy: bool = False
    env_file: Path | None = None
    log_format: str = "text"
    session_table: str | None = None
    session_db: Path | None = None
    no_session_tracking: bool = False

    @property
    def policy_source(self) -> str:
        return f"ssm:{self.policy_parameter}" if self.policy_parameter else f"file:{self.policy_file}"


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """`$STATE_DIRECTORY` under systemd, else `~/.local/state/sentinel`."""
    state = environ.get("STATE_DIRECTORY")
    if state:
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(state.split(":")[0])
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sentinel"


def default_session_db(environ: Mapping[str, str] = os.environ) -> Path:
    return default_state_dir(environ) / "sessions.db"


def default_token_file(environ: Mapping[str, str] = os.environ) -> Path:
    runtime = environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "token"
    return default_state_dir(environ) / "token"


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse the `--config` TOML file: top-level keys are option names (`session_table` or
    `session-table`); unknown keys are errors so a typo cannot silently do nothing."""
    import tomllib  # here: most runs have no --config, and every start-up millisecond shows (issue 12)

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: invalid TOML ({exc})") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in OPTIONS_BY_FIELD:
            raise ConfigError(f"--config {path}: unknown option {key!r}")
        values[name] = value
    return values


def build_config(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] = os.environ,
    config_file: Path | None = None,
) -> ServerConfig:
    """Merge the sources (flags > env > file > defaults), parse and validate every value.

    `flags` holds only the options given on the command line (absent or None = not given)."""
    file_values = read_config_file(config_file) if config_file else {}
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw: Any
        if flags.get(option.field) is not None:
            raw, source = flags[option.field], option.flag
        elif environ.get(option.env) not in (None, ""):
            raw, source = environ[option.env], option.env
        elif option.field in file_values:
            raw, source = file_values[option.field], f"{option.field} in {config_file}"
        else:
            continue
        try:
            values[option.field] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    config = ServerConfig(**values)
    _validate(config)
    return config


def _validate(config: ServerConfig) -> None:
    if config.policy_file and config.policy_parameter:
        raise ConfigError("--policy-file and --policy-parameter are mutually exclusive")
    if config.session_table and config.session_db:
        raise ConfigError("--session-table and --session-db are mutually exclusive")
    if config.server_duration < timedelta(minutes=15) or config.server_duration > timedelta(hours=12):
        raise ConfigError("--server-duration: must be between 15m (the STS minimum) and 12h")
    for name in ("flush_interval", "revocation_poll", "shutdown_timeout", "policy_refresh"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{OPTIONS_BY_FIELD[name].flag}: must be greater than zero")
