"""Sound events and their DESED-style tables: ``filename onset offset event_label``.

:class:`Event` is what detection returns and metrics take; tables map a file name to its
events. Reading names the file and line of any bad row; writing is atomic.

    >>> Event(0.5, 2.0, "Dog", 0.8)
    Event(onset=0.5, offset=2.0, label='Dog', score=0.8)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from earmark.errors import DataError
from earmark.files import write_text


@dataclass(frozen=True)
class Event:
    """One sound event: ``onset`` and ``offset`` in seconds, its ``label`` and an optional score.

        >>> Event(0.5, 2.0, "Dog", 0.8)
        Event(onset=0.5, offset=2.0, label='Dog', score=0.8)
    """

    onset: float
    offset: float
    label: str
    score: float | None = None


Events = Mapping[str, Sequence[Event]]  # filename -> events of that file

COLUMNS = ("filename", "onset", "offset", "event_label")

# The DCASE baseline's file names for one detection table per threshold.
_THRESHOLD_NAME = re.compile(r"_th_(\d+(?:\.\d*)?)\.tsv$")


# ---------------------------------------------------------------------------- reading, writing

def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a TSV file") from None
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    except OSError as err:
        raise DataError(path, f"cannot read: {err.strerror or err}") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(path, "empty file, expected a tab-separated header line")
    return lines


def _header(path: Path, line: str, required: Sequence[str]) -> list[str]:
    header = [cell.strip() for cell in line.split("\t")]
    missing = [c for c in required if c not in header]
    if missing:
        hint = " (the file looks comma-separated)" if "\t" not in line and "," in line else ""
        raise DataError(path, f"line 1: header lacks column(s) {', '.join(missing)}; expected "
                              f"tab-separated {', '.join(required)}{hint}")
    return header


def _number(path: Path, lineno: int, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, f"line {lineno}: {name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(path, f"line {lineno}: {name} {text!r} is not a finite number")
    if value < 0:
        raise DataError(path, f"line {lineno}: {name} {value} is negative")
    return value


def read_events(path: str | Path) -> dict[str, list[Event]]:
    """Events of a DESED-style TSV, per file in the table's row order.

    The header names ``filename onset offset event_label`` (tab-separated, in any order, other
    columns ignored except an optional ``score``); onset and offset are seconds. A row with only
    a file name (or empty onset, offset and label) lists a file without events.

    Raises :class:`~earmark.errors.DataError` naming the file and line for a missing column, a
    row with too many or too few fields, a non-numeric or negative time, an offset before its
    onset, or a weak (label without times) row.

        >>> import tempfile
        >>> table = Path(tempfile.mkdtemp()) / "public.tsv"
        >>> _ = table.write_text("filename\\tonset\\toffset\\tevent_label\\n"
        ...                      "Y5J603SAj7QM_210.000_220.000.wav\\t0.0\\t10.0\\tFrying\\n"
        ...                      "quiet.wav\\n")
        >>> events = read_events(table)
        >>> events["Y5J603SAj7QM_210.000_220.000.wav"][0]
        Event(onset=0.0, offset=10.0, label='Frying', score=None)
        >>> events["quiet.wav"]
        []
    """
    path = Path(path)
    lines = _lines(path)
    header = _header(path, lines[0], COLUMNS)
    col = {name: header.index(name) for name in (*COLUMNS, "score") if name in header}
    events: dict[str, list[Event]] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split("\t")]
        n_fields = len(cells)
        if n_fields > len(header):
            raise DataError(path, f"line {lineno}: {n_fields} fields, the header has "
                                  f"{len(header)}")
        cells += [""] * (len(header) - n_fields)
        name = cells[col["filename"]]
        if not name:
            raise DataError(path, f"line {lineno}: empty filename")
        onset, offset, label = (cells[col[c]] for c in COLUMNS[1:])
        if not (onset or offset or label):
            events.setdefault(name, [])
            continue
        if n_fields < len(header):
            raise DataError(path, f"line {lineno}: {n_fields} fields, expected {len(header)} "
                                  f"({', '.join(header)})")
        if not label:
            raise DataError(path, f"line {lineno}: empty event_label")
        if not (onset and offset):
            raise DataError(path, f"line {lineno}: {label!r} has no onset or offset (a weak "
                                  "label); sound event detection needs strong labels")
        on = _number(path, lineno, "onset", onset)
        off = _number(path, lineno, "offset", offset)
        if off < on:
            raise DataError(path, f"line {lineno}: offset {off} is before onset {on}")
        score = None
        if "score" in col and cells[col["score"]]:
            try:
                score = float(cells[col["score"]])
            except ValueError:
                raise DataError(path, f"line {lineno}: score {cells[col['score']]!r} is not "
                                      "a number") from None
        events.setdefault(name, []).append(Event(on, off, label, score))
    return events


def read_durations(path: str | Path) -> dict[str, float]:
    """``{filename: seconds}`` from a ``filename duration`` TSV (DESED's ``*_durations.tsv``).

        >>> import tempfile
        >>> table = Path(tempfile.mkdtemp()) / "public_durations.tsv"
        >>> _ = table.write_text("filename\\tduration\\n"
        ...                      "Y5J603SAj7QM_210.000_220.000.wav\\t10.0\\n"
        ...                      "quiet.wav\\t9.5\\n")
        >>> read_durations(table)
        {'Y5J603SAj7QM_210.000_220.000.wav': 10.0, 'quiet.wav': 9.5}
    """
    path = Path(path)
    lines = _lines(path)
    header = _header(path, lines[0], ("filename", "duration"))
    i_name, i_dur = header.index("filename"), header.index("duration")
    durations: dict[str, float] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split("\t")]
        if len(cells) <= max(i_name, i_dur):
            raise DataError(path, f"line {lineno}: {len(cells)} fields, expected {len(header)}")
        name, value = cells[i_name], _number(path, lineno, "duration", cells[i_dur])
        if not name:
            raise DataError(path, f"line {lineno}: empty filename")
        if durations.get(name, value) != value:
            raise DataError(path, f"line {lineno}: {name} has two durations, "
                                  f"{durations[name]} and {value}")
        durations[name] = value
    return durations


def write_events(path: str | Path, events: Events, score: bool = False,
                 keep_empty: bool = True) -> Path:
    """Write events as a DESED TSV (``filename onset offset event_label``, plus ``score``).

    Times have 3 decimals; each file's events are sorted by onset, then label. A file with no
    events gets a row with its name only when ``keep_empty`` (so it stays in an evaluation);
    DESED's own tables leave such files out. Written atomically: a crash leaves the old file
    or none, never half of one.

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "pred.tsv"
        >>> write_events(path, {"a.wav": [Event(0.5, 2.0, "Dog", 0.8)], "b.wav": []},
        ...              score=True) == path
        True
        >>> print(path.read_text())  # doctest: +NORMALIZE_WHITESPACE
        filename  onset  offset  event_label  score
        a.wav     0.500  2.000   Dog          0.8000
        b.wav
    """
    path = Path(path)
    rows = ["\t".join(COLUMNS + (("score",) if score else ()))]
    for name, file_events in events.items():
        name = str(name)
        if any(ch in name for ch in "\t\n\r"):
            raise ValueError(f"file name {name!r} contains a tab or line break")
        if not file_events and keep_empty:
            rows.append(name)
        for e in sorted(file_events, key=lambda e: (e.onset, e.label, e.offset)):
            row = f"{name}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}"
            if score:
                row += "\t" + ("" if e.score is None else f"{e.score:.4f}")
            rows.append(row)
    return write_text(path, "\n".join(rows) + "\n")


def read_predictions(path: str | Path) -> dict[float, dict[str, list[Event]]]:
    """Detection tables per threshold from a folder of ``*_th_<threshold>.tsv`` files.

    That is the DCASE baseline's layout (``predictions_th_0.50.tsv``, ...); other files in the
    folder are ignored.

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for threshold in ["0.30", "0.50", "0.70"]:
        ...     _ = write_events(folder / f"predictions_th_{threshold}.tsv",
        ...                      {"a.wav": [Event(0.5, 2.0, "Dog")]})
        >>> tables = read_predictions(folder)
        >>> list(tables)
        [0.3, 0.5, 0.7]
        >>> tables[0.5]
        {'a.wav': [Event(onset=0.5, offset=2.0, label='Dog', score=None)]}
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(path, "not a folder of predictions_th_<threshold>.tsv files")
    tables: dict[float, dict[str, list[Event]]] = {}
    for file in sorted(path.iterdir()):
        match = _THRESHOLD_NAME.search(file.name)
        if match and file.is_file():
            threshold = float(match.group(1))
            if threshold in tables:
                raise DataError(file, f"a second table for threshold {threshold}")
            tables[threshold] = read_events(file)
    if not tables:
        raise DataError(path, "no predictions_th_<threshold>.tsv files in the folder")
    return dict(sorted(tables.items()))
