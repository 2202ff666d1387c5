"""Commands on model files: ``export``, ``convert``, ``profile``, and ``pull`` and ``models``
for released checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from earmark.cli.options import (
    add_chunk,
    add_model,
    add_model_args,
    add_offline,
    add_progress,
    add_trust,
    command,
    error,
    model_args,
    progress,
)


def add_commands(sub) -> None:
    p = command(sub, "export", "ONNX export, checked against PyTorch")
    add_model(p, "not an .onnx: it is what export writes")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format")
    p.add_argument("out", help="the .onnx file to write")
    add_chunk(p, "what one call of the file scores: a streaming model's chunk, or a fixed "
                 "input length for a full-context model", "a streaming model's own chunk; "
                 "any length for a full-context model")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8 weights for the matrix products (ONNX Runtime dynamic "
                        "quantisation); the score difference to float is reported")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="clips to compare int8 and float scores on (its test split, at most "
                        "64; default: seeded noise)")
    add_trust(p)
    p.set_defaults(fn=cmd_export)

    p = command(sub, "convert", "official checkpoint -> model directory")
    p.add_argument("kind", choices=("htsat-official", "sat-official", "vit-official"),
                   help="whose checkpoint: HTS-AT's Lightning .ckpt, or SAT's / the audio "
                        "ViT's .pt")
    p.add_argument("checkpoint", help="the released checkpoint file")
    p.add_argument("out", help="model directory to write")
    p.add_argument("--labels", default=None, help="label file (default: the 527 AudioSet ones)")
    add_trust(p)
    p.set_defaults(fn=cmd_convert)

    p = command(sub, "profile", "parameters, FLOPs, memory, latency, real-time factor")
    p.add_argument("target", nargs="?", metavar="NAME_OR_MODEL",
                   help="a registry name (see --list), a model directory or a released "
                        "model's name (earmark models --pretrained)")
    p.add_argument("--list", action="store_true", help="list the registry names")
    p.add_argument("--seconds", type=float, default=None,
                   help="input length (default: the model's clip, or chunk for SAT)")
    p.add_argument("--batch", type=int, default=1, help="clips per forward pass")
    p.add_argument("--repeats", type=int, default=20, help="timed forward passes")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--num-classes", type=int, default=527,
                   help="outputs of a registry model (527: AudioSet)")
    add_model_args(p, "token_learner=8")
    p.add_argument("--operators", type=int, default=0, metavar="N",
                   help="also list the N operators that take the most time in one forward "
                        "pass (torch.profiler): where the time goes")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_trust(p)
    add_offline(p)
    p.set_defaults(fn=cmd_profile)

    p = command(sub, "pull", "a released checkpoint by name: downloaded, checked, converted "
                             "and cached")
    p.add_argument("name", metavar="NAME", help="a released model (earmark models --pretrained)")
    p.add_argument("--file", default=None, metavar="PATH",
                   help="take the checkpoint from this file instead of downloading it (for a "
                        "host that needs a browser, or a copy brought by hand)")
    add_offline(p)
    add_progress(p)
    p.set_defaults(fn=cmd_pull)

    p = command(sub, "models", "the registry's model names, or the released checkpoints and "
                               "what is cached")
    p.add_argument("--pretrained", action="store_true",
                   help="list the released checkpoints: model, paper mAP, integrity, what the "
                        "cache holds")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(fn=cmd_models)


def cmd_export(a) -> int:
    from earmark.export import calibration_clips, export_onnx
    from earmark.infer.onnx import onnx_metadata
    from earmark.infer.tagger import load

    if a.format != "onnx":
        return error(f"unknown format {a.format!r} (onnx)")
    tagger = load(a.model, trust_checkpoint=a.trust_checkpoint)
    clips = None
    if a.data:
        from earmark.data.sources import from_spec

        clips = calibration_clips(tagger, from_spec(a.data))
    path = export_onnx(tagger, a.out, chunk_seconds=a.chunk, quantize=a.quantize, clips=clips)
    meta = onnx_metadata(path)
    check = meta.get("check") or {}
    print(f"wrote {path}; onnxruntime matches PyTorch within "
          f"{check.get('max_abs_diff', float('nan')):.2e}")
    quant = meta.get("quantization")
    if quant:
        print(f"int8: scores within {quant['max_abs_score_diff']:.3g} of float (mean "
              f"{quant['mean_abs_score_diff']:.3g}), the same top label on "
              f"{100 * quant['top1_agreement']:.1f} % of {quant['clips']} clips")
    return 0


def cmd_convert(a) -> int:
    from earmark.models.convert import convert

    out = convert(a.kind, a.checkpoint, a.out, labels=a.labels,
                  trust_checkpoint=a.trust_checkpoint)
    print(f"wrote model directory {out}")
    return 0


def cmd_profile(a) -> int:
    from earmark.models.registry import create_model, list_models
    from earmark.profile import format_profile, profile_model

    if a.list:
        print("\n".join(list_models()))
        return 0
    if a.target is None:
        return error("give a model name or directory (or --list)")
    from earmark.models.pretrained import RELEASES

    if Path(a.target).exists() or a.target in RELEASES:
        from earmark.infer.tagger import load

        model = load(a.target, trust_checkpoint=a.trust_checkpoint).model
    else:
        model = create_model(a.target, a.num_classes, **model_args(a.model_arg)).eval()
    result = profile_model(model, seconds=a.seconds, batch=a.batch, repeats=a.repeats,
                           threads=a.threads, operators=a.operators)
    print(json.dumps(result, indent=2) if a.json else format_profile(result))
    return 0


def cmd_pull(a) -> int:
    from earmark.models.pretrained import pull, release

    r = release(a.name)
    out = pull(a.name, file=a.file, offline_mode=a.offline or None, progress=progress(a))
    integrity = "sha256 pinned in earmark" if r.pinned else "sha256 recorded at first use"
    print(f"{r.name}: model directory {out} (from {r.file}; {integrity}; licence: {r.licence})")
    return 0


def cmd_models(a) -> int:
    if not a.pretrained:
        from earmark.models.registry import list_models

        names = list_models()
        print(json.dumps(names) if a.json else "\n".join(names))
        return 0
    from earmark.models.pretrained import home, pretrained_table

    rows = pretrained_table()
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = ("name", "model", "mAP", "integrity", "cached", "file")
    cells = [head] + [(r["name"], r["model"], f"{r['paper_map']:.1f}", r["integrity"],
                       r["cached"], r["file"] + ("" if r["download"] == "direct"
                                                 else " (browser: pull --file)"))
                      for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
    print(f"cache: {home()}  (mAP: AudioSet, as the papers report it)")
    return 0
