"""Files a test reads from or writes for a `sentinel` process: the decision log, a config edit."""

from __future__ import annotations

import json
import os
from pathlib import Path


def decision_statuses(path: Path) -> list[int]:
    """The HTTP status of every entry in a decision log file."""
    return [json.loads(line)["status"] for line in path.read_text().splitlines() if line]


def write_atomically(path: Path, text: str) -> None:
    """Replace a file in one rename, so a reload never reads half of it."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
