"""What every text-to-speech engine of :mod:`earmark.voices` offers, and the errors they raise.

An engine is a small object (one module each: :mod:`~earmark.voices.festival`,
:mod:`~earmark.voices.flite`, :mod:`~earmark.voices.piper`) that finds its voices and speaks
:class:`Take` s with one of them. The generator (:mod:`~earmark.voices.generate`) does the rest:
trimming, pitch, pseudo-speakers, level and files.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from earmark.errors import EarmarkError

# the ways a word is said: alone, as a question, or cut out of a carrier phrase
STYLES = ("plain", "question", "carrier")
CARRIER = ("say", "again")  # "say seven again"


class EngineMissing(EarmarkError):
    """A text-to-speech engine that is not installed; the message names what provides it."""


class VoiceFailed(EarmarkError):
    """A voice that could not speak a take (the program failed, or its output was empty)."""


@dataclass(frozen=True)
class Take:
    """One rendition of a text: its ``style`` (see :data:`STYLES`), ``duration`` (1.2: 20 %
    slower) and ``pitch`` (factor on the voice's F0, applied by the engine where it can)."""

    text: str
    style: str = "plain"
    duration: float = 1.0
    pitch: float = 1.0

    def spoken(self) -> str:
        """The text the engine is given: ``"seven?"`` for a question, the carrier phrase for
        ``carrier``."""
        if self.style == "question":
            return f"{self.text}?"
        if self.style == "carrier":
            return f"{CARRIER[0]} {self.text} {CARRIER[1]}"
        return self.text


@dataclass
class Speech:
    """What an engine returns: mono float samples, their rate, and whether the take's pitch
    was already applied (otherwise the generator shifts it)."""

    wave: np.ndarray
    sample_rate: int
    pitched: bool = False


class Engine(Protocol):
    """The interface of a text-to-speech engine."""

    name: str  # "festival"
    programs: tuple[str, ...]  # programs it runs (none may be espeak's)
    provides: str  # what to install when it is missing, e.g. "the Debian package flite"
    styles: tuple[str, ...]  # the styles of STYLES it can speak

    def missing(self) -> str | None:
        """Why the engine cannot run here, or None."""

    def voices(self) -> list[str]:
        """The names of its voices found here."""

    def speak(self, voice: str, takes: list[Take], seed: int = 0
              ) -> list[Speech | VoiceFailed]:
        """Each take spoken by ``voice`` (a failure in place of a take that failed); an engine
        that draws random numbers draws them from ``seed``."""


def missing_programs(programs: tuple[str, ...], provides: str, engine: str) -> str | None:
    """A reason naming the first of ``programs`` not on PATH, or None."""
    for program in programs:
        if shutil.which(program) is None:
            return f"{engine}: program {program!r} not found on PATH; install {provides}"
    return None


def run(args: list[str], what: str, stdin: str | None = None, timeout: float = 120.0) -> str:
    """Run a program; its stdout, or :class:`VoiceFailed` naming ``what`` and its stderr."""
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise VoiceFailed(f"{what}: {err}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise VoiceFailed(f"{what}: exit code {done.returncode}"
                          + (f" ({' / '.join(tail)})" if tail else ""))
    return done.stdout


def cut(wave: np.ndarray, sample_rate: int, start: float, end: float,
        fade: float = 0.01) -> np.ndarray:
    """The samples between ``start`` and ``end`` seconds with 10 ms fades at both ends (a cut
    word keeps some of its neighbours' coarticulation; the fades keep the cut from clicking)."""
    a, b = max(0, int(start * sample_rate)), min(len(wave), int(np.ceil(end * sample_rate)))
    if b - a < int(0.05 * sample_rate):
        raise VoiceFailed(f"the word spans {end - start:.3f} s of the carrier phrase")
    x = wave[a:b].astype(np.float32, copy=True)
    n = min(int(fade * sample_rate), len(x) // 2)
    if n:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x
