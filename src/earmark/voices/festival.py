"""festival's English voices (Debian ``festival`` and ``festvox-*`` packages), run as a program.

festival is asked for its voices (``voice-locations``: name and folder; the folder's parent
names the language, and only English ones are kept) and speaks a voice's takes in one
``festival --pipe`` run. Rate: ``Duration_Stretch`` (or the HTS engine's ``-r``); pitch: the
voice's intonation targets (``int_lr_params``) scaled, except for HTS voices, which make their
own F0 (the generator shifts those). A carrier phrase is cut at festival's own word times
(each token's first word start and last word end, from the utterance's Token and Word
relations).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import soundfile as sf

from earmark.voices.engine import (
    STYLES,
    Speech,
    Take,
    VoiceFailed,
    cut,
    missing_programs,
    run,
)

ENGLISH = {"english", "us", "british", "american", "en", "en_us", "en_gb"}

# Debian packages of festival's English voices (apt-cache search festvox): the 8 kHz builds of
# kal and ked are the same speakers as the 16 kHz ones
PACKAGES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k",
            "cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}

_LOCATION = re.compile(r'\((\w+)\s*\.\s*"([^"]*)"\)')
_RESULT = re.compile(r'\("EM" (\d+) "?(\w+)"? ([-\d.e]+) ([-\d.e]+)\)')


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _take_script(voice: str, take: Take, index: int, out: Path) -> str:
    d, p = float(take.duration), float(take.pitch)
    return f"""
(voice_{voice})
(set! em_hts (string-equal "HTS" (Param.get 'Synth_Method)))
(if em_hts
    (set! hts_engine_params (append hts_engine_params (list (list "-r" {1.0 / d:.6f}))))
    (begin
      (Parameter.set 'Duration_Stretch {d:.6f})
      (if (assoc 'target_f0_mean int_lr_params)
          (set! int_lr_params
                (list (list 'target_f0_mean
                            (* {p:.6f} (car (cdr (assoc 'target_f0_mean int_lr_params)))))
                      (list 'target_f0_std
                            (* {p:.6f} (car (cdr (assoc 'target_f0_std int_lr_params)))))
                      (assoc 'model_f0_mean int_lr_params)
                      (assoc 'model_f0_std int_lr_params))))))
(set! em_utt (SynthText {_quote(take.spoken())}))
(utt.save.wave em_utt {_quote(str(out))} 'riff)
(mapcar (lambda (tok)
          (if (item.daughter1 tok)
              (print (list "EM" {index} (if em_hts "hts" "lr")
                           (item.feat tok "daughter1.word_start")
                           (item.feat tok "daughtern.word_end")))))
        (utt.relation.items em_utt 'Token))
"""


class Festival:
    """festival, run as ``festival --pipe``."""

    name = "festival"
    programs = ("festival",)
    provides = ("the Debian package festival and English voices "
                "(festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts)")
    styles = STYLES

    def missing(self) -> str | None:
        return missing_programs(self.programs, self.provides, self.name)

    def voices(self) -> list[str]:
        """festival's English voices, e.g. ``['cmu_us_slt_arctic_hts', 'kal_diphone']``."""
        out = run(["festival", "--pipe"], "festival: listing voices",
                  stdin="(voice.list)\n(print voice-locations)\n")
        found = [(name, Path(folder)) for name, folder in _LOCATION.findall(out)]
        return sorted(name for name, folder in found if folder.parent.name.lower() in ENGLISH)

    def speak(self, voice: str, takes: list[Take], seed: int = 0
              ) -> list[Speech | VoiceFailed]:
        with tempfile.TemporaryDirectory(prefix="earmark-festival-") as tmp:
            files = [Path(tmp) / f"{i}.wav" for i in range(len(takes))]
            script = "".join(_take_script(voice, t, i, f)
                             for i, (t, f) in enumerate(zip(takes, files)))
            try:
                out = run(["festival", "--pipe"], f"festival voice {voice}", stdin=script,
                          timeout=60.0 + 10.0 * len(takes))
            except VoiceFailed as err:
                return [err] * len(takes)
            tokens: dict[int, list[tuple[str, float, float]]] = {}
            for i, method, start, end in _RESULT.findall(out):
                tokens.setdefault(int(i), []).append((method, float(start), float(end)))
            return [self._result(voice, t, f, tokens.get(i, []), out)
                    for i, (t, f) in enumerate(zip(takes, files))]

    def _result(self, voice: str, take: Take, file: Path, tokens, out: str
                ) -> Speech | VoiceFailed:
        what = f"festival voice {voice} saying {take.spoken()!r}"
        if not file.exists() or not tokens:
            lines = [ln for ln in out.splitlines() if "error" in ln.lower()]
            return VoiceFailed(f"{what}: no audio" + (f" ({lines[-1].strip()})" if lines
                                                      else ""))
        wave, rate = sf.read(file, dtype="float32", always_2d=True)
        wave = wave.mean(axis=1)
        pitched = tokens[0][0] == "lr"
        if take.style != "carrier":
            return Speech(wave, rate, pitched)
        words = len(take.text.split())
        if len(tokens) != words + 2:
            return VoiceFailed(f"{what}: festival read {len(tokens)} tokens, not "
                               f"{words + 2}; the word cannot be cut out")
        try:
            return Speech(cut(wave, rate, tokens[1][1], tokens[words][2]), rate, pitched)
        except VoiceFailed as err:
            return VoiceFailed(f"{what}: {err}")
