"""Files `serve` writes for workloads: the token (0600, no newline) and an EnvironmentFile, and
the reading of that EnvironmentFile back (`exec --attach`).

Both are written so that no other local user can read the token or own either file (issue 11):
the temporary file has an unguessable name and is created with `O_EXCL` inside the target
directory (opened once, every step relative to it), checked through its descriptor, then renamed
over the final name; the rename and the directory are fsynced. A directory other users can write
to is refused unless it is sticky (they cannot then rename or delete our files) and a file already
at the final name is ours. Each refusal is an `UnsafeFileError` naming the path and the reason.
An env file is read back only if no one but root and us could have written it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from sentinel.errors import ConfigError

SECRET_MODE = 0o600
# No secret in the env file (the token stays in the token file), but other units read it.
ENV_MODE = 0o644

# Random temporary names cannot be guessed; a clash (or a name squatted anyway) is retried.
_CREATE_ATTEMPTS = 8
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
# serve writes two lines; a few more may come (issue 14). Anything this large is not ours.
_ENV_FILE_MAX_BYTES = 64 * 1024


class UnsafeFileError(ConfigError):
    """A token or env file Sentinel refuses to write: others could read, replace or own it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def write_secret_file(path: Path, secret: str) -> None:
    """Write `secret` with mode 0600 and no trailing newline, atomically (temp file + rename).

    Raises `UnsafeFileError` for a place other users control and `OSError` when writing fails.
    """
    write_file_safely(path, secret.encode(), SECRET_MODE)


def env_file_text(url: str, token_file: Path) -> str:
    """The content of the workload `EnvironmentFile=`: where Sentinel is and where its token is."""
    return f"AWS_CONTAINER_CREDENTIALS_FULL_URI={url}\nAWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={token_file}\n"


def write_env_file(path: Path, url: str, token_file: Path) -> None:
    """An `EnvironmentFile=` for workload units, written like the token file but mode 0644.

    Its integrity matters as much as the token's secrecy: a workload sends its token to whatever
    URL this file names.
    """
    write_file_safely(path, env_file_text(url, token_file).encode(), ENV_MODE)


def read_env_file(path: Path) -> dict[str, str]:
    """The `KEY=VALUE` lines of an env file, refusing one that someone else could have written.

    A workload sends its token to the URL this file names, so the file must be a regular file
    owned by root or us and writable by neither group nor others (`UnsafeFileError`); the checks
    are made on the descriptor that is read, so a file swapped in between cannot pass them. A
    symbolic link is followed and its target judged. Blank lines and `#` comments are skipped;
    other lines without `=` are a `ConfigError`; `OSError` when it cannot be read.
    """
    # O_NONBLOCK: a FIFO put in its place must not hang the caller.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(path, "refusing to use: not a regular file")
        if info.st_uid not in (0, os.geteuid()):
            raise UnsafeFileError(path, f"refusing to use: owned by another user (uid {info.st_uid})")
        if info.st_mode & _WRITABLE_BY_OTHERS:
            mode = stat.S_IMODE(info.st_mode)
            raise UnsafeFileError(path, f"refusing to use: writable by other users (mode {mode:04o})")
        data = os.read(fd, _ENV_FILE_MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _ENV_FILE_MAX_BYTES:
        raise UnsafeFileError(path, f"refusing to use: larger than {_ENV_FILE_MAX_BYTES} bytes")
    variables: dict[str, str] = {}
    for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise ConfigError(f"{path}: line {number} is not KEY=VALUE")
        variables[key.strip()] = value.strip()
    return variables


def ensure_secret_file(path: Path, secret: str) -> bool:
    """Rewrite the token file unless it is already ours, 0600, single-linked and holds `secret`.

    For SIGHUP: a deleted or altered token file comes back. Returns True if it was rewritten.
    """
    return ensure_file(path, secret.encode(), SECRET_MODE)


def ensure_env_file(path: Path, url: str, token_file: Path) -> bool:
    """`ensure_secret_file` for the env file (mode 0644). Returns True if it was rewritten."""
    return ensure_file(path, env_file_text(url, token_file).encode(), ENV_MODE)


def ensure_file(path: Path, content: bytes, mode: int) -> bool:
    """Write `path` with `write_file_safely` unless it already holds exactly that; True if written."""
    if _holds(path, content, mode):
        return False
    write_file_safely(path, content, mode)
    return True


def write_file_safely(path: Path, content: bytes, mode: int) -> None:
    """Create `path` with `content` and `mode`, atomically, so no other user can read or own it.

    Raises `UnsafeFileError` when the directory or an existing file is not safe to write through,
    `OSError` when the write itself fails (and then removes its temporary file).
    """
    parent = path.parent
    # Created private; an existing directory is judged as it is, below.
    parent.mkdir(parents=True, exist_ok=True, mode=0o700 if mode == SECRET_MODE else 0o755)
    dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        shared = _check_directory(path, os.fstat(dir_fd))
        if shared:
            _check_existing(path, dir_fd)
        temporary, fd = _create_temporary(path, dir_fd)
        try:
            try:
                _check_ours(path, os.fstat(fd), "the temporary file")
                os.fchmod(fd, mode)
                _write_all(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=dir_fd)
            raise
        # The rename is durable only once the directory entry is on disk.
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _check_directory(path: Path, info: os.stat_result) -> bool:
    """Refuse a directory someone else controls; True if others may create files in it."""
    if info.st_uid not in (0, os.geteuid()):
        raise UnsafeFileError(
            path, f"refusing to write: its directory is owned by another user (uid {info.st_uid})"
        )
    shared = bool(info.st_mode & _WRITABLE_BY_OTHERS)
    if shared and not info.st_mode & stat.S_ISVTX:
        raise UnsafeFileError(
            path, "refusing to write: its directory is writable by other users and not sticky"
        )
    return shared


def _check_existing(path: Path, dir_fd: int) -> None:
    """In a shared (sticky) directory, a file already at the final name must be ours."""
    try:
        info = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeFileError(
            path, "refusing to write: it is a symbolic link in a directory other users can write to"
        )
    _check_ours(path, info, "the existing file")


def _check_ours(path: Path, info: os.stat_result, what: str) -> None:
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
        raise UnsafeFileError(
            path, f"refusing to write: {what} is not a regular file of ours with a single link"
        )


def _create_temporary(path: Path, dir_fd: int) -> tuple[str, int]:
    """A new file next to `path` that nobody else can have opened: O_EXCL on a random name."""
    import secrets  # here, as hmac in `_holds`: `exec --attach` only reads (issue 14)

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_CREATE_ATTEMPTS):
        name = f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            return name, os.open(name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise UnsafeFileError(path, "refusing to write: could not create a temporary file no one else holds")


def _write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]


def _holds(path: Path, content: bytes, mode: int) -> bool:
    """True if `path` is a regular file of ours, with one link, `mode`, and exactly `content`."""
    try:
        # O_NONBLOCK: a FIFO put in its place must not hang the caller.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.geteuid()
            or info.st_nlink != 1
            or stat.S_IMODE(info.st_mode) != mode
            or info.st_size != len(content)
        ):
            return False
        import hmac

        return hmac.compare_digest(os.read(fd, len(content) + 1), content)
    finally:
        os.close(fd)
