"""Several profiles from one server (issue 14): which profiles a server serves, each fully resolved.

A server serves one **default** profile (what `--profile`, `SENTINEL_PROFILE` or the TOML file's
`profile` names, answered on `GET /`) and any number of **extra** profiles (a repeated `--profile`,
or a `[profiles.NAME]` table in the TOML file), each answered on `GET /profiles/NAME`. Every
profile is its own session with its own token, record, SourceIdentity and revocation; what they
share is the listener, the policy, the decision log and the session store.

Per-profile options and what an extra profile gets when its table does not say (DESIGN.md §6):

| option | extra profile's default |
|---|---|
| `role_arn` | the profile's own `role_arn` (never the default profile's) |
| `region` | `--region`, else the profile's own region |
| `server_duration` | `--server-duration` |
| `token_file` | `<profile>.token` beside the default profile's token file |
| `env_file` | `<profile>.env` beside the default profile's env file (none without one) |
| `server_instance_id` | `<hostname>-<profile>` |

This module only names and checks; `config.py` parses, `assembly.py` builds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sentinel.errors import ConfigError

# What a `[profiles.NAME]` table may set; every other option is the server's, not a profile's.
PROFILE_FIELDS = ("role_arn", "region", "server_duration", "token_file", "env_file", "server_instance_id")
# An extra profile's name becomes a URL path segment and a file name: no `/`, no `:`, no leading dot.
_EXTRA_NAME = re.compile(r"[A-Za-z0-9_@+=,-][A-Za-z0-9_.@+=,-]{0,63}")
PROFILE_PATH_PREFIX = "/profiles/"


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    """What the configuration says about one extra profile; None: not said (see the table above)."""

    name: str
    role_arn: str | None = None
    region: str | None = None
    server_duration: timedelta | None = None
    token_file: Path | None = None
    env_file: Path | None = None
    server_instance_id: str | None = None


@dataclass(frozen=True, slots=True)
class ServedProfile:
    """One profile of a server, every option resolved."""

    # None: a single-profile server on the SDK's default profile (AWS_PROFILE, else `default`).
    name: str | None
    default: bool
    role_arn: str | None
    region: str | None
    server_duration: timedelta
    token_file: Path
    env_file: Path | None
    server_instance_id: str | None  # None: `<hostname>-<profile>` (config.default_server_instance_id)

    @property
    def paths(self) -> tuple[str, ...]:
        """The request paths that serve it: `/` for the default, `/profiles/NAME` for any named one."""
        named = (PROFILE_PATH_PREFIX + self.name,) if self.name and _EXTRA_NAME.fullmatch(self.name) else ()
        return ("/", *named) if self.default else named

    @property
    def path(self) -> str:
        """The path its workloads are told to use (in its env file)."""
        return self.paths[0]


def check_extra_name(name: str, source: str) -> str:
    if _EXTRA_NAME.fullmatch(name) is None:
        raise ConfigError(
            f"{source}: {name[:80]!r} cannot be served beside another profile "
            "(a name of letters, digits and _.@+=,- is needed: it becomes a path and a file name)"
        )
    return name


def resolve_profiles(
    *,
    default_name: str | None,
    role_arn: str | None,
    region: str | None,
    server_duration: timedelta,
    token_file: Path,
    env_file: Path | None,
    server_instance_id: str | None,
    extras: tuple[ProfileSettings, ...],
) -> tuple[ServedProfile, ...]:
    """The default profile (from the top-level options), then the extras in order; checked: no
    name twice, no two profiles writing one token file, env file or instance id (ConfigError)."""
    served = [
        ServedProfile(
            name=default_name,
            default=True,
            role_arn=role_arn,
            region=region,
            server_duration=server_duration,
            token_file=token_file.absolute(),
            env_file=env_file.absolute() if env_file else None,
            server_instance_id=server_instance_id,
        )
    ]
    if extras and default_name is None:
        raise ConfigError(
            "several profiles: name the default one too (the first --profile, or `profile` in the file)"
        )
    for extra in extras:
        served.append(
            ServedProfile(
                name=extra.name,
                default=False,
                role_arn=extra.role_arn,
                region=extra.region or region,
                server_duration=extra.server_duration or server_duration,
                token_file=(extra.token_file or token_file.parent / f"{extra.name}.token").absolute(),
                env_file=_extra_env_file(extra, env_file),
                server_instance_id=extra.server_instance_id,
            )
        )
    _check_distinct(served)
    return tuple(served)


def _extra_env_file(extra: ProfileSettings, default: Path | None) -> Path | None:
    if extra.env_file is not None:
        return extra.env_file.absolute()
    return (default.parent / f"{extra.name}.env").absolute() if default is not None else None


def _check_distinct(served: list[ServedProfile]) -> None:
    seen: dict[object, str] = {}
    for profile in served:
        label = profile.name or "default"
        for what, value in (
            ("profile", profile.name),
            ("token file", profile.token_file),
            ("env file", profile.env_file),
            ("server instance id", profile.server_instance_id),
        ):
            if value is None:
                continue
            key = (what, value)
            if key in seen:
                if what == "profile":
                    raise ConfigError(f"profile {label!r} is given twice")
                raise ConfigError(f"profiles {seen[key]!r} and {label!r} would share one {what}: {value}")
            seen[key] = label
