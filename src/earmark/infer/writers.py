r"""``earmark tag``'s output formats, written one row at a time as each file or chunk is
scored, so a long batch shows results at once and keeps nothing in memory.

    >>> import io
    >>> out = io.StringIO()
    >>> w = TagWriter("tsv", out)
    >>> w.row("dog.wav", None, None, [("bark", 0.91), ("speech", 0.12)])
    >>> w.row("street.wav", 0.0, 2.0, [("car", 0.5)])
    >>> w.close()
    >>> out.getvalue().splitlines()  # doctest: +NORMALIZE_WHITESPACE
    ['file\tstart\tend\trank\tlabel\tscore',
     'dog.wav\t\t\t1\tbark\t0.910000',
     'dog.wav\t\t\t2\tspeech\t0.120000',
     'street.wav\t0.000\t2.000\t1\tcar\t0.500000']
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

FORMATS = ("table", "json", "tsv")


class TagWriter:
    """Rows of (file, chunk start and end in seconds or None, top labels and scores) as a
    readable table, a JSON list or TSV, on ``out`` (default: stdout), flushed row by row."""

    def __init__(self, fmt: str, out: TextIO | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.fmt, self.count, self.out = fmt, 0, out
        if fmt == "tsv":
            self._write("file\tstart\tend\trank\tlabel\tscore")
        elif fmt == "json":
            self._write("[", end="")

    def row(self, f: str, s: float | None, e: float | None,
            tags: list[tuple[str, float]]) -> None:
        if self.fmt == "json":
            item = {"file": f, **({"start": s, "end": e} if s is not None else {}),
                    "labels": [{"label": lab, "score": round(sc, 6)} for lab, sc in tags]}
            text = json.dumps(item, indent=2).replace("\n", "\n  ")
            self._write(("," if self.count else "") + "\n  " + text, end="")
        elif self.fmt == "tsv":
            span = f"{'' if s is None else f'{s:.3f}'}\t{'' if e is None else f'{e:.3f}'}"
            self._write("\n".join(f"{f}\t{span}\t{r}\t{lab}\t{sc:.6f}"
                                  for r, (lab, sc) in enumerate(tags, 1)))
        else:
            where = f"{f}" + ("" if s is None else f" [{s:7.2f}-{e:7.2f} s]")
            self._write(f"{where}  " + "  ".join(f"{lab} {sc:.3f}" for lab, sc in tags))
        self.count += 1

    def close(self) -> None:
        if self.fmt == "json":
            self._write("\n]" if self.count else "]")

    def _write(self, text: str, end: str = "\n") -> None:
        # stdout looked up at each write: it may be replaced after the writer is made
        print(text, end=end, file=self.out or sys.stdout, flush=True)
