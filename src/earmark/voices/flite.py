"""flite's built-in voices (Debian ``flite``), run as a program: ``flite -voice NAME -t TEXT``.

Voices come from ``flite -lv``, less ``awb_time`` (a limited-domain voice that only says the
time of day) and ``kal`` (``kal16`` at 8 kHz: the same voice). Rate: ``--setf duration_stretch``; pitch is left to the generator (a voice's
default F0 target is not visible from outside). A carrier phrase is cut at flite's own
segment end times (``-psdur``): the word's phones are those flite gives the carrier's first
word and the word when spoken alone (``-ps``); where the carrier's phones are not exactly
those three words' in a row, the take fails rather than cutting at a guess.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import soundfile as sf

from earmark.voices.engine import (
    CARRIER,
    STYLES,
    Speech,
    Take,
    VoiceFailed,
    cut,
    missing_programs,
    run,
)

LEFT_OUT = {"awb_time", "kal"}  # limited domain; kal16 at 8 kHz


def _phones(voice: str, text: str) -> list[str]:
    out = run(["flite", "-voice", voice, "-t", text, "-o", "none", "-ps"],
              f"flite voice {voice} reading {text!r}")
    return [p for p in out.split() if p != "pau"]


class Flite:
    """flite, one run per take."""

    name = "flite"
    programs = ("flite",)
    provides = "the Debian package flite"
    styles = STYLES

    def missing(self) -> str | None:
        return missing_programs(self.programs, self.provides, self.name)

    def voices(self) -> list[str]:
        """flite's voices, e.g. ``['awb', 'kal16', 'rms', 'slt']``."""
        out = run(["flite", "-lv"], "flite: listing voices")
        names = out.split(":", 1)[-1].split()
        return sorted(n for n in names if n not in LEFT_OUT)

    def speak(self, voice: str, takes: list[Take], seed: int = 0
              ) -> list[Speech | VoiceFailed]:
        results: list[Speech | VoiceFailed] = []
        with tempfile.TemporaryDirectory(prefix="earmark-flite-") as tmp:
            for i, take in enumerate(takes):
                try:
                    results.append(self._speak(voice, take, Path(tmp) / f"{i}.wav"))
                except VoiceFailed as err:
                    results.append(err)
        return results

    def _speak(self, voice: str, take: Take, file: Path) -> Speech:
        what = f"flite voice {voice} saying {take.spoken()!r}"
        args = ["flite", "-voice", voice, "--setf", f"duration_stretch={take.duration:.6f}",
                "-t", take.spoken(), "-o", str(file)]
        out = run(args + (["-psdur"] if take.style == "carrier" else []), what)
        if not file.exists():
            raise VoiceFailed(f"{what}: no audio written")
        wave, rate = sf.read(file, dtype="float32", always_2d=True)
        wave = wave.mean(axis=1)
        if take.style != "carrier":
            return Speech(wave, rate)
        segments = []  # (phone, end time), pauses left out
        for item in out.split():
            phone, _, end = item.rpartition(":")
            if phone and phone != "pau":
                segments.append((phone, float(end)))
        before, word = _phones(voice, CARRIER[0]), _phones(voice, take.text)
        after = _phones(voice, CARRIER[1])
        if [p for p, _ in segments] != before + word + after:
            raise VoiceFailed(f"{what}: the carrier's phones are not those of its words "
                              "spoken apart; the word cannot be cut out")
        start = segments[len(before) - 1][1]
        end = segments[len(before) + len(word) - 1][1]
        try:
            return Speech(cut(wave, rate, start, end), rate)
        except VoiceFailed as err:
            raise VoiceFailed(f"{what}: {err}") from None
