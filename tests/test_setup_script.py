"""`scripts/setup` installs exactly what `uv.lock` pins (issue 9): it refuses a lock that no longer
matches pyproject.toml in one line, installs the locked versions, and does nothing on a second run.

Each test runs the real scripts in a copy of the files they read, with this checkout's bootstrapped
uv (`.venv-uv/`, which `./scripts/setup` made before the tests ran) copied along so no test downloads
uv again. uv's package cache is the user's, warm from that same setup.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STALE = "setup: uv.lock is out of date with pyproject.toml: run ./scripts/lock and commit uv.lock"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (REPO / ".venv-uv" / "bin" / "uv").exists(), reason="no .venv-uv: run ./scripts/setup first"
    ),
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of what setup reads: the project metadata, the lock, the scripts and the package."""
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    shutil.copytree(REPO / "sentinel", tmp_path / "sentinel", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / ".venv-uv", tmp_path / ".venv-uv", symlinks=True)
    return tmp_path


def _run(tree: Path, script: str) -> subprocess.CompletedProcess[str]:
    # An activated venv or a uv setting of the caller's would point uv somewhere else.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "SENTINEL_EXTRAS") and not key.startswith("UV_")
    }
    return subprocess.run(
        [str(tree / "scripts" / script)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_setup_refuses_a_lock_that_pyproject_has_outgrown_in_one_line(tree: Path) -> None:
    """1. Tighten a dependency in pyproject.toml without re-locking.
    2. setup exits 1: after its one progress line, one line that says to run ./scripts/lock.
    3. Nothing was stamped as installed, so the next run tries again."""
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text()
    # Whatever anyio's lower bound is today, an added upper bound is a change the lock has not seen.
    spec = re.search(r'"anyio>=[^"]+"', text)
    assert spec is not None, "pyproject.toml no longer depends on anyio: pick another dependency to tighten"
    pyproject.write_text(text.replace(spec.group(0), spec.group(0)[:-1] + ',<1000"'))

    result = _run(tree, "setup")

    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[1:] == [STALE]
    assert "Traceback" not in result.stderr
    assert not (tree / ".venv" / ".synced").exists()


def test_setup_installs_the_locked_versions_and_is_a_no_op_the_second_time(tree: Path) -> None:
    """1. setup in a fresh copy: exit 0, only its progress line on stderr.
    2. The venv holds Sentinel (editable, from the copy) and every tool at the version uv.lock pins.
    3. A second setup prints nothing and changes nothing."""
    first = _run(tree, "setup")
    assert first.returncode == 0, first.stderr
    assert len(first.stderr.splitlines()) == 1, first.stderr

    locked = dict(
        re.findall(r'\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', (tree / "uv.lock").read_text())
    )
    versions = subprocess.run(
        [
            str(tree / ".venv" / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, sentinel; print(sentinel.__file__);"
            "[print(n, m.version(n)) for n in ('botocore', 'aiobotocore', 'moto', 'pytest', 'ruff')]",
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert versions[0] == str(tree / "sentinel" / "__init__.py")
    for line in versions[1:]:
        name, version = line.split()
        assert locked[name] == version
    for tool in ("sentinel", "pytest", "ruff", "mypy", "moto_server"):
        assert (tree / ".venv" / "bin" / tool).exists(), tool
    stamp = (tree / ".venv" / ".synced").read_text()

    second = _run(tree, "setup")
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
    assert (tree / ".venv" / ".synced").read_text() == stamp
