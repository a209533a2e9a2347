"""Token and env files: written so no other local user can read the token or own a file (issue 11)."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sentinel.files import (
    UnsafeFileError,
    ensure_env_file,
    ensure_secret_file,
    write_env_file,
    write_secret_file,
)
from tests.support.other_user import OtherUser, other_user

URL = "http://127.0.0.1:8080/"


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def private(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_secret_file_is_0600_without_newline_and_leaves_no_temporary(tmp_path: Path, token: str) -> None:
    """The token file (and a missing directory, created 0700) holds exactly the token, mode 0600;
    nothing else is left in the directory; writing again replaces it."""
    path = tmp_path / "new" / "token"
    write_secret_file(path, token)
    assert path.read_bytes() == token.encode()
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    write_secret_file(path, "second")
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["token"]


def test_env_file_is_0644_and_names_url_and_token_file(private: Path) -> None:
    path = private / "workload.env"
    write_env_file(path, URL, private / "token")
    assert path.read_text().splitlines() == [
        f"AWS_CONTAINER_CREDENTIALS_FULL_URI={URL}",
        f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={private / 'token'}",
    ]
    assert _mode(path) == 0o644
    assert os.listdir(private) == ["workload.env"]


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_directory_writable_by_others_without_sticky_bit_is_refused(
    private: Path, token: str, mode: int
) -> None:
    """Group- or world-writable and not sticky: one-line refusal naming the file; nothing written."""
    private.chmod(mode)
    with pytest.raises(UnsafeFileError) as raised:
        write_secret_file(private / "token", token)
    assert str(raised.value) == (
        f"{private / 'token'}: refusing to write: its directory is writable by other users and not sticky"
    )
    with pytest.raises(UnsafeFileError):
        write_env_file(private / "workload.env", URL, private / "token")
    assert os.listdir(private) == []


def test_sticky_shared_directory_is_used_and_our_existing_file_replaced(private: Path, token: str) -> None:
    private.chmod(0o1777)
    path = private / "token"
    write_secret_file(path, "old")
    write_secret_file(path, token)
    assert path.read_bytes() == token.encode()
    assert _mode(path) == 0o600


def test_symlink_at_the_final_name_in_a_shared_directory_is_refused(
    private: Path, tmp_path: Path, token: str
) -> None:
    """In a sticky shared directory a symlink at the final name is refused, its target untouched."""
    private.chmod(0o1777)
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    (private / "token").symlink_to(target)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        write_secret_file(private / "token", token)
    assert target.read_text() == "untouched"
    assert sorted(os.listdir(private)) == ["token"]


def test_hard_linked_final_file_in_a_shared_directory_is_refused(private: Path, token: str) -> None:
    """A second link to the token file (someone could read it through that name) is refused."""
    private.chmod(0o1777)
    write_secret_file(private / "token", "old")
    os.link(private / "token", private / "copy")
    with pytest.raises(UnsafeFileError, match="single link"):
        write_secret_file(private / "token", token)
    assert (private / "token").read_bytes() == b"old"


def test_a_failed_write_removes_its_temporary_file(private: Path, token: str) -> None:
    """The final name is a non-empty directory, so the rename fails: OSError, no temporary left."""
    (private / "token").mkdir()
    (private / "token" / "inside").write_text("")
    with pytest.raises(OSError, match=r"Is a directory|Directory not empty"):
        write_secret_file(private / "token", token)
    assert os.listdir(private) == ["token"]


def test_ensure_rewrites_missing_altered_or_loosened_files_only(private: Path, token: str) -> None:
    """SIGHUP's repair: a correct token file is left alone (same inode); a deleted one, one with
    other content, a wrong mode, or a symlink in its place is rewritten; the env file likewise."""
    path = private / "token"
    assert ensure_secret_file(path, token) is True
    inode = path.stat().st_ino
    assert ensure_secret_file(path, token) is False
    assert path.stat().st_ino == inode
    path.unlink()
    assert ensure_secret_file(path, token) is True
    path.write_text("tampered")
    assert ensure_secret_file(path, token) is True
    path.chmod(0o644)
    assert ensure_secret_file(path, token) is True
    assert _mode(path) == 0o600
    path.unlink()
    decoy = private / "decoy"
    decoy.write_text(token)
    decoy.chmod(0o600)
    path.symlink_to(decoy)
    assert ensure_secret_file(path, token) is True
    assert not path.is_symlink()
    assert path.read_bytes() == token.encode()

    env = private / "workload.env"
    assert ensure_env_file(env, URL, path) is True
    assert ensure_env_file(env, URL, path) is False
    assert ensure_env_file(env, "http://127.0.0.1:9/", path) is True
    assert "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9/\n" in env.read_text()
    env.unlink()
    assert ensure_env_file(env, URL, path) is True
    assert _mode(env) == 0o644


def test_ensure_refuses_a_file_of_another_user_in_a_shared_directory(private: Path, token: str) -> None:
    user = other_user()
    private.chmod(0o1777)
    squatted = private / "token"
    squatted.write_text("")
    os.chown(squatted, user.uid, user.gid)
    with pytest.raises(UnsafeFileError, match="not a regular file of ours"):
        ensure_secret_file(squatted, token)
    assert squatted.read_text() == ""


def test_directory_owned_by_another_user_is_refused(private: Path, token: str) -> None:
    """Its owner could rename our file away and put its own in place, whatever the mode."""
    user = other_user()
    os.chown(private, user.uid, user.gid)
    with pytest.raises(UnsafeFileError, match=rf"owned by another user \(uid {user.uid}\)"):
        write_secret_file(private / "token", token)


# -- the race, with a real second user (issue 11, item 2) --------------------------------------

# Run as the other user: pre-create (O_EXCL, 0666) every name given, keep them open, say "ready";
# once told the token was written, read back through each descriptor, try to read the token
# file and to take its name over, and report as JSON.
_SQUATTER = """
import json, os, sys
directory, names = sys.argv[1], sys.argv[2:]
fds = {n: os.open(os.path.join(directory, n), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666) for n in names}
print("ready", flush=True)
sys.stdin.readline()
report = {"read": {n: os.pread(fd, 4096, 0).decode("latin-1") for n, fd in fds.items()}}
final = os.path.join(directory, "token")
try:
    with open(final, "rb") as f:
        report["final"] = f.read().decode("latin-1")
except OSError as exc:
    report["final"] = type(exc).__name__
try:
    os.rename(os.path.join(directory, names[0]), final)
    report["rename"] = "renamed"
except OSError as exc:
    report["rename"] = type(exc).__name__
print(json.dumps(report), flush=True)
"""


def _guessable_names() -> list[str]:
    """The old predictable temporary name for this process (and its neighbours), and the usual
    temp-file spellings an attacker would try."""
    pid = os.getpid()
    return [
        f".token.{pid}.tmp",
        *(f".token.{pid + offset}.tmp" for offset in range(1, 4)),
        ".token.tmp",
        "token.tmp",
        ".token.swp",
        "token~",
    ]


class _Squatter:
    """The `_SQUATTER` helper running as another user, ready (its files exist and are open)."""

    def __init__(self, user: OtherUser, directory: Path, names: list[str]) -> None:
        self.process = subprocess.Popen(
            user.python(_SQUATTER, str(directory), *names),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        # Bounded: the helper either says ready or exits (EOF) at once.
        assert self.process.stdout.readline() == "ready\n"

    def report(self) -> dict[str, object]:
        out, _ = self.process.communicate("written\n", timeout=10)
        assert self.process.returncode == 0
        report: dict[str, object] = json.loads(out)
        return report


Squat = Callable[[OtherUser, Path, list[str]], _Squatter]


@pytest.fixture
def squat() -> Iterator[Squat]:
    """Start squatters; any still running after the test is stopped."""
    started: list[_Squatter] = []

    def _start(user: OtherUser, directory: Path, names: list[str]) -> _Squatter:
        started.append(_Squatter(user, directory, names))
        return started[-1]

    yield _start
    for squatter in started:
        if squatter.process.poll() is None:
            squatter.process.kill()
            squatter.process.wait()


def _nowhere_but_the_token_file(directory: Path, token: str) -> None:
    for path in directory.iterdir():
        if path.name != "token" or path.stat().st_uid != 0:
            assert token not in path.read_text(encoding="latin-1"), path.name


def test_second_user_squatting_temp_names_in_a_sticky_directory_gets_nothing(
    shared_dir: Path, token: str, squat: Squat
) -> None:
    """As root, in a world-writable sticky directory (/tmp's layout): `nobody` pre-creates the old
    predictable temporary name and every other it can guess, holding each open. The token is
    written anyway; `nobody` reads nothing through its descriptors, cannot read the token file
    and cannot rename its own file over it; the token file is root's, 0600, one link."""
    user = other_user()
    shared_dir.chmod(0o1777)
    squatter = squat(user, shared_dir, _guessable_names())
    write_secret_file(shared_dir / "token", token)
    report = squatter.report()
    assert report["read"] == dict.fromkeys(_guessable_names(), "")
    assert report["final"] == "PermissionError"
    assert report["rename"] == "PermissionError"
    info = (shared_dir / "token").lstat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode), info.st_nlink) == (0, 0o600, 1)
    assert (shared_dir / "token").read_bytes() == token.encode()
    _nowhere_but_the_token_file(shared_dir, token)


def test_second_user_owning_the_final_name_in_a_sticky_directory_is_refused(
    shared_dir: Path, token: str, squat: Squat
) -> None:
    """`nobody` pre-creates the token file's own name: the write is refused with one line and
    the token is written nowhere `nobody` can read."""
    user = other_user()
    shared_dir.chmod(0o1777)
    squatter = squat(user, shared_dir, ["token", *_guessable_names()])
    with pytest.raises(UnsafeFileError, match="not a regular file of ours"):
        write_secret_file(shared_dir / "token", token)
    report = squatter.report()
    assert report["read"] == dict.fromkeys(["token", *_guessable_names()], "")
    assert report["final"] == ""
    _nowhere_but_the_token_file(shared_dir, token)


def test_second_user_in_a_world_writable_directory_without_sticky_bit_is_refused(
    shared_dir: Path, token: str, squat: Squat
) -> None:
    """Without the sticky bit `nobody` could rename our file away: refused before any file exists."""
    user = other_user()
    shared_dir.chmod(0o777)
    squatter = squat(user, shared_dir, _guessable_names())
    with pytest.raises(UnsafeFileError, match="not sticky"):
        write_secret_file(shared_dir / "token", token)
    report = squatter.report()
    assert report["read"] == dict.fromkeys(_guessable_names(), "")
    assert report["final"] == "FileNotFoundError"
    _nowhere_but_the_token_file(shared_dir, token)
