"""The command line's output on a fixed set of commands, compared with a recorded copy.

Moving code between modules must not change what a user sees. Each case runs one command on
small made-up data and models with fixed weights; its exit code, stdout and stderr (paths
and timings normalised) must equal ``tests/cli_outputs/NAME.txt``. To record them again
after a change that is meant to alter the output, run::

    EARMARK_RECORD_CLI=1 python -m pytest tests/test_cli_outputs.py

and review the difference before committing it.
"""

import os
import re
from pathlib import Path

import pytest

from earmark.cli import main

RECORDED = Path(__file__).parent / "cli_outputs"
RECORD = os.environ.get("EARMARK_RECORD_CLI") == "1"

# what differs from run to run: durations and latencies, and ONNX Runtime's float error
TIMINGS = [
    (re.compile(r"\(\d+\.\d ms\)"), "(<ms>)"),
    (re.compile(r"in \d+ s;"), "in <s> s;"),
    (re.compile(r"score=\d\.\d{4}"), "score=<metric>"),
    (re.compile(r"within \d\.\d\de[-+]\d\d"), "within <diff>"),
    # a run's test metrics: training may round differently on another CPU
    (re.compile(r"(  test \S+\s+)\d\.\d{4}"), r"\1<metric>"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synth clips and soundscapes, a tiny ViT (full context) and a tiny SAT (streaming),
    both with fixed weights, and a copy of them with a file that is not audio."""
    import torch

    import earmark
    from earmark.models.directory import save_model_dir

    root = tmp_path_factory.mktemp("outputs")
    assert main(["synth", str(root / "data"), "--clips-per-class", "2", "--clip-seconds", "0.5",
                 "--soundscapes", "2", "--soundscape-seconds", "3"]) == 0
    labels = sorted({p.parent.name for p in (root / "data" / "clips").rglob("*.wav")})
    torch.manual_seed(0)
    vit = earmark.create_model("vit-tiny", len(labels), depth=1, embed_dim=32, num_heads=2,
                               clip_seconds=1.0)
    save_model_dir(vit.eval(), root / "vit", labels)
    torch.manual_seed(1)
    sat = earmark.create_model("sat-tiny", len(labels), depth=1, embed_dim=48, num_heads=3,
                               chunk_seconds=1.0)
    save_model_dir(sat.eval(), root / "sat", labels)
    (root / "truth.tsv").write_text("filename\tonset\toffset\tevent_label\n"
                                    "scape_0000.wav\t0.0\t2.5\tengine\n"
                                    "scape_0001.wav\t2.1\t3.0\tbabble\n"
                                    "scape_0001.wav\t0.5\t1.0\tsiren\n")
    (root / "bad").mkdir()
    (root / "bad" / "corrupt.wav").write_bytes(b"not audio at all")
    assert main(["detect", str(root / "vit"), *scapes(root), "--threshold", "0.51", "--chunk",
                 "1", "--out", str(root / "events.tsv")]) == 0
    return root


def clips(root: Path, n: int = 3) -> list[str]:
    return [str(p) for p in sorted((root / "data" / "clips").rglob("*.wav"))[:n]]


def scapes(root: Path) -> list[str]:
    return [str(p) for p in sorted((root / "data" / "soundscapes").glob("*.wav"))]


# name -> the command's arguments, given the fixture's root folder
CASES = {
    "synth": lambda r: ["synth", str(r / "synth2"), "--clips-per-class", "1", "--clip-seconds",
                        "0.25", "--soundscapes", "1", "--soundscape-seconds", "1"],
    "profile-list": lambda r: ["profile", "--list"],
    "profile-no-target": lambda r: ["profile"],
    "tag-table": lambda r: ["tag", str(r / "vit"), *clips(r), "--top-k", "2", "--no-progress"],
    "tag-json": lambda r: ["tag", str(r / "vit"), *clips(r, 2), "--format", "json",
                           "--top-k", "2"],
    "tag-tsv-chunks": lambda r: ["tag", str(r / "vit"), *scapes(r), "--format", "tsv",
                                 "--chunk", "1", "--top-k", "1"],
    "tag-chunks-table": lambda r: ["tag", str(r / "sat"), scapes(r)[0], "--chunk", "1",
                                   "--top-k", "2"],
    "tag-bad-file": lambda r: ["tag", str(r / "vit"), clips(r, 1)[0],
                               str(r / "bad" / "corrupt.wav"), str(r / "missing.wav")],
    "tag-data-spec": lambda r: ["tag", str(r / "vit"), f"synth:{r / 'data'}", "--top-k", "1",
                                "--format", "tsv"],
    "detect": lambda r: ["detect", str(r / "vit"), *scapes(r), "--threshold", "0.51",
                         "--chunk", "1"],
    "detect-sat": lambda r: ["detect", str(r / "sat"), scapes(r)[0], "--threshold", "0.55",
                             "--median", "0.1", "--min-gap", "0.2"],
    # the default before a streaming model detected in its own chunk: one clip-long piece
    "detect-sat-clip": lambda r: ["detect", str(r / "sat"), scapes(r)[0], "--threshold", "0.55",
                                  "--median", "0.1", "--min-gap", "0.2", "--chunk", "10"],
    "detect-bad-file": lambda r: ["detect", str(r / "vit"), str(r / "bad"), "--chunk", "1"],
    "stream": lambda r: ["stream", str(r / "sat"), scapes(r)[0], "--top-k", "2"],
    "stream-full-context": lambda r: ["stream", str(r / "vit"), scapes(r)[0], "--top-k", "1",
                                      "--tail", "drop"],
    "stream-several": lambda r: ["stream", str(r / "sat"), *scapes(r),
                                 str(r / "bad" / "corrupt.wav"), "--top-k", "1"],
    "stream-no-input": lambda r: ["stream", str(r / "sat")],
    "eval": lambda r: ["eval", str(r / "vit"), "--data", f"synth:{r / 'data'}", "--split", "all",
                       "--no-progress"],
    "eval-json": lambda r: ["eval", str(r / "sat"), "--data", f"synth:{r / 'data'}", "--split",
                            "all", "--json", "--no-progress"],
    "eval-missing-model": lambda r: ["eval", str(r / "nothing"), "--data",
                                     f"synth:{r / 'data'}"],
    "export-bad-format": lambda r: ["export", str(r / "vit"), str(r / "x.onnx"),
                                    "--format", "onnx"],
    "sed-eval": lambda r: ["sed-eval", "--truth", str(r / "truth.tsv"),
                           "--pred", str(r / "events.tsv")],
    "train": lambda r: ["train", "--data", f"synth:{r / 'data'}", "--out", str(r / "run"),
                        "--epochs", "1", "--clip-seconds", "0.5", "--no-progress",
                        "--model-arg", "depth=1", "--model-arg", "embed_dim=32",
                        "--model-arg", "num_heads=2"],
    "detect-out": lambda r: ["detect", str(r / "vit"), *scapes(r), "--threshold", "0.51",
                             "--chunk", "1", "--out", str(r / "events.tsv")],
    "export": lambda r: ["export", str(r / "sat"), str(r / "sat.onnx")],
    "codebook-not-codebook": lambda r: ["codebook", str(r / "vit")],
}


# where stderr carries third-party warnings or progress that may change, only stdout is kept
STDOUT_ONLY = {"train", "export"}


def normalise(text: str, root: Path) -> str:
    text = text.replace(str(root), "<root>")
    for pattern, replacement in TIMINGS:
        text = pattern.sub(replacement, text)
    return text


def run(argv: list[str], capsys, root: Path, stderr: bool = True) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    err = err if stderr else "(not compared)\n"
    args = " ".join(normalise(a, root) for a in argv)
    return (f"$ earmark {args}\n[exit {code}]\n--- stdout\n{normalise(out, root)}"
            f"--- stderr\n{normalise(err, root)}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_command_line_prints_what_it_printed_before(name, world, capsys):
    capsys.readouterr()
    text = run(CASES[name](world), capsys, world, stderr=name not in STDOUT_ONLY)
    path = RECORDED / f"{name}.txt"
    if RECORD:
        RECORDED.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is not recorded: run with EARMARK_RECORD_CLI=1"
    assert text == path.read_text()


def test_every_subcommand_keeps_its_options(capsys):
    """The usage line of each subcommand (its options, their metavars and which are required),
    which a script that calls earmark relies on."""
    from earmark.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    lines = []
    for name in sorted(commands):
        usage = " ".join(commands[name].format_usage().split())
        lines.append(usage)
    text = "\n".join(lines) + "\n"
    path = RECORDED / "usage.txt"
    if RECORD:
        RECORDED.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()
