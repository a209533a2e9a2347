"""Configuration: flags > SENTINEL_* environment > --config TOML > defaults, and one-line errors.

The merge is checked on `build_config` directly (every source, every kind of value), then through
the real command line: bad input of every source gives exactly one stderr line naming the option,
exit 78 and no traceback; the precedence holds for a running `sentinel serve` (its bound port).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from harness.loopback import free_port
from harness.policies import ALLOW_POLICY
from harness.sandbox import AwsSandbox
from sentinel.config import (
    ServerConfig,
    build_config,
    default_server_instance_id,
    default_session_db,
    default_token_file,
    served_profiles,
)
from sentinel.errors import ConfigError
from tests.support.sentinel_process import run_sentinel
from tests.support.serve import serving

EXIT_CONFIG = 78


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sentinel.toml"
    path.write_text(text)
    return path


# -- the merge ------------------------------------------------------------------------------------


def test_defaults_when_no_source_gives_a_value() -> None:
    assert build_config({}, {}) == ServerConfig()
    config = ServerConfig()
    assert (config.port, config.flush_interval, config.queue_size, config.revocation_poll) == (
        0,
        1.0,
        10_000,
        2.0,
    )
    assert (config.shutdown_timeout, config.server_duration, config.log_format) == (
        5.0,
        timedelta(minutes=15),
        "text",
    )


def test_each_source_wins_over_the_ones_below_it(tmp_path: Path) -> None:
    """Set port, flush interval, log format and session db in the file, the environment and the
    flags in every combination; the highest source present decides each one."""
    file = _toml(
        tmp_path,
        'port = 1111\nflush-interval = "3s"\nlog_format = "json"\n'
        'session_db = "/from/file.db"\nlazy = true\n',
    )
    env = {
        "SENTINEL_PORT": "2222",
        "SENTINEL_FLUSH_INTERVAL": "2s",
        "SENTINEL_SESSION_DB": "/from/env.db",
    }
    flags = {"port": "3333", "session_db": None, "flush_interval": None}

    only_file = build_config({}, {}, file)
    assert (only_file.port, only_file.flush_interval, only_file.log_format, only_file.lazy) == (
        1111,
        3.0,
        "json",
        True,
    )
    assert only_file.session_db == Path("/from/file.db")

    env_over_file = build_config({}, env, file)
    assert (env_over_file.port, env_over_file.flush_interval) == (2222, 2.0)
    assert env_over_file.session_db == Path("/from/env.db")
    assert env_over_file.log_format == "json"  # only the file sets it

    flags_over_all = build_config(flags, env, file)
    assert (flags_over_all.port, flags_over_all.flush_interval) == (3333, 2.0)  # None = flag not given
    assert flags_over_all.session_db == Path("/from/env.db")


def test_allow_user_is_repeatable_a_comma_list_in_env_and_a_list_in_toml(tmp_path: Path) -> None:
    """`--allow-user` (issue 11) from each source; flags win as a whole, the default is nobody
    checked at all (an empty tuple: no lookup)."""
    assert ServerConfig().allow_user == ()
    toml = _toml(tmp_path, 'allow_user = ["app", 1001]\n')
    assert build_config({}, {}, toml).allow_user == ("app", "1001")
    env = {"SENTINEL_ALLOW_USER": "app, 1001,web"}
    assert build_config({}, env, toml).allow_user == ("app", "1001", "web")
    flags = {"allow_user": ["root", "0"]}
    assert build_config(flags, {"SENTINEL_ALLOW_USER": "app"}, toml).allow_user == ("root", "0")


def test_an_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    file = _toml(tmp_path, "port = 1111\n")
    assert build_config({}, {"SENTINEL_PORT": ""}, file).port == 1111


def test_durations_accept_seconds_and_units() -> None:
    config = build_config(
        {"flush_interval": "0.25", "server_duration": "1h30m", "shutdown_timeout": "2m"}, {}
    )
    assert (config.flush_interval, config.server_duration, config.shutdown_timeout) == (
        0.25,
        timedelta(minutes=90),
        120.0,
    )


def test_default_locations_follow_systemd_directories(tmp_path: Path) -> None:
    systemd = {"RUNTIME_DIRECTORY": "/run/sentinel", "STATE_DIRECTORY": "/var/lib/sentinel:/var/lib/other"}
    assert default_token_file(systemd) == Path("/run/sentinel/token")
    assert default_session_db(systemd) == Path("/var/lib/sentinel/sessions.db")
    user = {"XDG_STATE_HOME": str(tmp_path)}
    assert default_token_file(user) == tmp_path / "sentinel" / "token"
    assert default_session_db(user) == tmp_path / "sentinel" / "sessions.db"


def test_the_default_instance_id_is_host_and_profile_and_always_valid() -> None:
    """Stable across starts (issue 10 item 4); characters the option refuses become `_`; a long
    one keeps its start plus a hash, so two long names stay apart. Each is a valid value."""
    assert default_server_instance_id("demo", "web-1.example.com") == "web-1.example.com-demo"
    assert default_server_instance_id("team/dev:ro", "box") == "box-team_dev_ro"
    long_a = default_server_instance_id("a" * 100, "box")
    long_b = default_server_instance_id("a" * 99 + "b", "box")
    assert len(long_a) == len(long_b) == 64
    assert long_a != long_b
    assert long_a.startswith("box-aaaa")
    for value in (long_a, default_server_instance_id("team/dev:ro", "box")):
        assert build_config({"server_instance_id": value}, {}).server_instance_id == value


@pytest.mark.parametrize(
    ("flags", "env", "toml", "message"),
    [
        ({"port": "70000"}, {}, None, "--port: 70000 is out of range 0..65535"),
        ({}, {"SENTINEL_PORT": "http"}, None, "SENTINEL_PORT: 'http' is not a whole number"),
        ({}, {}, "port = 1.5\n", "port in "),
        ({"flush_interval": "5x"}, {}, None, "--flush-interval: '5x' is not a duration"),
        ({}, {}, "flush_interval = [1]\n", "flush_interval in "),
        ({}, {}, "shutdown_timeout = inf\n", "shutdown_timeout in "),
        ({"revocation_poll": "99999999999999999999"}, {}, None, "--revocation-poll: "),
        ({"revocation_poll": "0"}, {}, None, "--revocation-poll: must be greater than zero"),
        ({"server_duration": "5m"}, {}, None, "--server-duration: must be between 15m"),
        ({"host": "0.0.0.0"}, {}, None, "--host: '0.0.0.0' is not a loopback address"),
        ({}, {}, "host = 1\n", "host in "),
        ({}, {}, "bogus-key = 1\n", "unknown option 'bogus-key'"),
        ({}, {}, "session_db = {a = 1}\n", "session_db in "),
        ({}, {}, "profile = true\n", "profile in "),
        ({"policy_file": "/p.yaml", "policy_parameter": "/sentinel/policy"}, {}, None, "mutually exclusive"),
        ({"session_table": "t-sessions", "session_db": "/s.db"}, {}, None, "mutually exclusive"),
        ({"log_format": "xml"}, {}, None, "--log-format: 'xml' must be text or json"),
        ({}, {}, "port = \n", "invalid TOML"),
    ],
)
def test_invalid_values_raise_one_line_naming_the_option(
    tmp_path: Path, flags: dict[str, str], env: dict[str, str], toml: str | None, message: str
) -> None:
    file = _toml(tmp_path, toml) if toml is not None else None
    with pytest.raises(ConfigError) as caught:
        build_config(flags, env, file)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


# -- through the command line -----------------------------------------------------------------


def _assert_one_config_error(result_stderr: str, returncode: int, *needles: str) -> None:
    lines = result_stderr.splitlines()
    assert returncode == EXIT_CONFIG, result_stderr
    assert len(lines) == 1, result_stderr
    assert lines[0].startswith("sentinel: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result_stderr


@pytest.mark.parametrize(
    ("args", "env", "toml", "needle"),
    [
        (["--port", "65536"], {}, None, "--port"),
        (["--port", "-1"], {}, None, "--port"),
        (["--flush-interval", "soon"], {}, None, "--flush-interval"),
        (["--server-duration", "2d"], {}, None, "--server-duration"),
        (["--host", "192.0.2.1"], {}, None, "--host"),
        (["--host", "::"], {}, None, "--host"),
        (
            ["--policy-file", "/p.yaml", "--policy-parameter", "/sentinel/policy"],
            {},
            None,
            "--policy-parameter",
        ),
        ([], {"SENTINEL_QUEUE_SIZE": "0"}, None, "SENTINEL_QUEUE_SIZE"),
        ([], {}, "queue_size = 12\nflush_intervall = 1\n", "flush_intervall"),
        ([], {}, "revocation_poll = [1, 2]\n", "revocation_poll"),
        (["--allow-user", "bad name"], {}, None, "--allow-user"),
        (["--allow-user", "no-such-user-zz"], {}, None, "--allow-user no-such-user-zz: no such user"),
        (["--allow-user", "4294967296"], {}, None, "--allow-user"),
        ([], {"SENTINEL_ALLOW_USER": "root,,"}, None, "SENTINEL_ALLOW_USER"),
        ([], {}, "allow_user = [true]\n", "allow_user"),
        ([], {}, "allow_user = []\n", "allow_user"),
    ],
)
def test_serve_with_invalid_configuration_prints_one_line_and_exits_78(
    tmp_path: Path, args: list[str], env: dict[str, str], toml: str | None, needle: str
) -> None:
    if toml is not None:
        args = [*args, "--config", str(_toml(tmp_path, toml))]
    result = run_sentinel(["serve", *args], {**_plain_env(), **env})
    _assert_one_config_error(result.stderr, result.returncode, needle)
    assert result.stdout == ""


def test_exec_checks_its_configuration_the_same_way() -> None:
    result = run_sentinel(["exec", "--server", "--port", "http", "--", "true"], _plain_env())
    _assert_one_config_error(result.stderr, result.returncode, "--port")


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    result = run_sentinel(["serve", "--config", str(tmp_path / "absent.toml")], _plain_env())
    _assert_one_config_error(result.stderr, result.returncode, "--config", "file not found")


def test_missing_policy_exits_78(tmp_path: Path) -> None:
    """No policy source at all, and a policy file that does not exist: both exit 78."""
    none_given = run_sentinel(["serve", "--profile", "demo"], _plain_env())
    _assert_one_config_error(none_given.stderr, none_given.returncode, "--policy-file")
    absent = tmp_path / "absent.yaml"
    missing = run_sentinel(["serve", "--profile", "demo", "--policy-file", str(absent)], _plain_env())
    _assert_one_config_error(missing.stderr, missing.returncode, str(absent))


def test_a_policy_that_does_not_validate_exits_78_naming_the_rule_and_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        'version: "1"\nrules:\n  - name: fine\n    effect: allow\n'
        "  - name: prod-typo\n    effect: allw\n    conditions: {profiles: [prod]}\n"
    )
    result = run_sentinel(["serve", "--profile", "demo", "--policy-file", str(policy)], _plain_env())
    _assert_one_config_error(result.stderr, result.returncode, 'rule "prod-typo"', "line 6", "allw")


def test_json_log_format_makes_the_error_line_json_too(tmp_path: Path) -> None:
    """With --log-format json the final error line is JSON as well (here: no policy)."""
    result = run_sentinel(["serve", "--profile", "demo", "--log-format", "json"], _plain_env())
    assert result.returncode == EXIT_CONFIG
    (line,) = result.stderr.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert "no policy" in entry["message"]


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}


def test_precedence_holds_for_a_running_server(sandbox: AwsSandbox, tmp_path: Path) -> None:
    """Three free ports: one in the TOML file, one in SENTINEL_PORT, one as --port.

    1. file + env: serve binds the env's port.
    2. file + env + flag: serve binds the flag's port.
    The other settings come from the file (policy, session db) in both runs."""
    file_port, env_port, flag_port = _three_free_ports()
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_POLICY)
    config = _toml(
        tmp_path,
        f'port = {file_port}\npolicy_file = "{policy}"\nsession_db = "{tmp_path / "sessions.db"}"\n',
    )
    env = sandbox.env(SENTINEL_PORT=str(env_port))
    with serving(env, tmp_path / "run-env", "--config", str(config)) as served:
        assert served.port == env_port
        assert served.credentials()[0] == 200
        assert served.process.stop() == 0
    with serving(env, tmp_path / "run-flag", "--config", str(config), "--port", str(flag_port)) as served:
        assert served.port == flag_port
        assert served.process.stop() == 0
    assert (tmp_path / "sessions.db").exists()


def _three_free_ports() -> tuple[int, int, int]:
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    first, second, third = ports
    return first, second, third


def test_profile_tables_and_a_repeated_profile_resolve_every_profile(tmp_path: Path) -> None:
    """Issue 14. 1. A file with `profile` and two tables: the default first, its own table beats
       the top level; `ops` takes its token file from its table, `audit` takes the convention
       (`audit.token` and `audit.env` beside the default's files), `--region`, and no role_arn of
       the default's.
    2. A repeated --profile: those profiles only, the first the default; tables still give options
       (ops's token file is its table's, and dev's lands beside it).
    3. A flag or the environment beats the default's table."""
    toml = tmp_path / "sentinel.toml"
    toml.write_text(
        'profile = "dev"\nregion = "eu-west-1"\n'
        'token_file = "/run/s/token"\nenv_file = "/run/s/workload.env"\n'
        'role_arn = "arn:aws:iam::123456789012:role/top"\n'
        '[profiles.dev]\nrole_arn = "arn:aws:iam::123456789012:role/dev"\n'
        '[profiles.ops]\ntoken_file = "/run/o/ops-token"\nserver_duration = "1h"\n'
        "[profiles.audit]\n"
    )
    config = build_config({}, {}, toml)
    served = served_profiles(config, {})
    assert [(p.name, p.default, p.path) for p in served] == [
        ("dev", True, "/"),
        ("ops", False, "/profiles/ops"),
        ("audit", False, "/profiles/audit"),
    ]
    dev, ops, audit = served
    assert dev.role_arn == "arn:aws:iam::123456789012:role/dev"
    assert (ops.token_file, ops.server_duration, ops.role_arn) == (
        Path("/run/o/ops-token"),
        timedelta(hours=1),
        None,
    )
    assert (ops.env_file, ops.region) == (Path("/run/s/ops.env"), "eu-west-1")
    assert (audit.token_file, audit.env_file) == (Path("/run/s/audit.token"), Path("/run/s/audit.env"))
    assert audit.server_duration == timedelta(minutes=15)

    repeated = served_profiles(build_config({"profile": ["ops", "dev"]}, {}, toml), {})
    assert [(p.name, p.token_file) for p in repeated] == [
        ("ops", Path("/run/o/ops-token")),
        ("dev", Path("/run/o/dev.token")),
    ]

    flagged = build_config({"role_arn": "arn:aws:iam::123456789012:role/flag"}, {}, toml)
    assert flagged.role_arn == "arn:aws:iam::123456789012:role/flag"
    assert build_config({}, {"SENTINEL_PROFILE": "audit"}, toml).profile == "audit"


def test_one_profile_needs_no_name_and_keeps_its_single_profile_layout() -> None:
    """No --profile at all: one unnamed profile (the SDK's default chain) on `/` only."""
    (only,) = served_profiles(build_config({}, {}), {"XDG_STATE_HOME": "/h"})
    assert (only.name, only.paths, only.token_file) == (None, ("/",), Path("/h/sentinel/token"))
