"""Small file helpers shared across earmark: writes that never leave half a file behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON through a temporary file in the same folder, then
    rename it into place: a crash leaves the old file or the new one, never a mix.

    >>> write_json("metrics.json", {"accuracy": 0.99})  # doctest: +SKIP
    PosixPath('metrics.json')
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path
