"""Commands that use a trained model: ``tag``, ``detect``, ``stream`` and ``serve``."""

from __future__ import annotations

import sys

from earmark.cli.options import (
    add_chunk,
    add_model,
    add_offline,
    add_progress,
    add_threads,
    add_trust,
    command,
    error,
    progress,
    report_skipped,
)

# the limits of `earmark serve` that end a request or a connection early: ServeOptions' field
# -> (type, its default, help); see README, "Serving"
SERVE_LIMITS = {
    "max_request_seconds": (float, 60.0, "wall time of one /v1/tag request, waiting included; "
                                         "past it the answer is 503"),
    "max_chunks": (int, 2000, "chunks one /v1/tag request may ask for (chunk=S); more: 422"),
    "max_upload_minutes": (float, 30.0, "audio in one /v1/tag upload, read from its header; "
                                        "more: 422"),
    "max_uploads": (int, 4, "/v1/tag requests read and scored at once; the others wait their "
                            "turn within their time"),
    "max_unconfigured": (int, 8, "WebSocket connections yet to send their configuration; "
                                 "more: 503"),
    "config_seconds": (float, 5.0, "time a new WebSocket has to send its configuration"),
}


def add_commands(sub) -> None:
    p = command(sub, "tag", "top-k labels per file (or per chunk)")
    add_model(p)
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR",
                   help="audio files, folders, clips in packs or shards (PACK#KEY), or data "
                        "SPECs such as shards:DIR (every clip)")
    p.add_argument("--top-k", type=int, default=5, help="labels per file or chunk")
    p.add_argument("--batch-size", type=int, default=32,
                   help="clips of one length scored together (1: one file at a time)")
    p.add_argument("--workers", type=int, default=None,
                   help="threads decoding files ahead (default: a quarter of the cores, at "
                        "least one; decoding costs about a quarter of a short clip's scoring)")
    add_threads(p)
    add_chunk(p, "a row of labels for each", "one row per file")
    p.add_argument("--format", choices=("table", "json", "tsv"), default="table",
                   help="output on stdout, one row as each file or chunk is scored")
    add_progress(p)
    add_trust(p)
    p.set_defaults(fn=cmd_tag)

    p = command(sub, "detect", "sound events as a DESED-style TSV, optional timeline PNG")
    add_model(p)
    p.add_argument("inputs", nargs="+", metavar="FILE", help="audio files or folders")
    p.add_argument("--out", default=None, help="events TSV (filename onset offset event_label)")
    p.add_argument("--plot", default=None, help="timeline PNG")
    p.add_argument("--threshold", type=float, default=None,
                   help="score an event must reach, for every class (default: the model's "
                        "tuned thresholds, else 0.5)")
    p.add_argument("--median", type=float, default=None, help="median filter, seconds")
    p.add_argument("--min-duration", type=float, default=None, help="seconds")
    p.add_argument("--min-gap", type=float, default=None, help="merge gaps shorter than this")
    p.add_argument("--label-map", default=None,
                   help="'desed' (AudioSet -> DESED, as HTS-AT) or a JSON file label -> label")
    add_chunk(p, "events from the scores of chunks instead of frames",
              "frames where the model has them; else a streaming model's own chunk, a "
              "full-context model's clip")
    p.add_argument("--tune", default=None, metavar="SPEC",
                   help="tune per-class thresholds on the strong labels of a data SPEC "
                        "(its valid split if it has one)")
    p.add_argument("--save", action="store_true", help="store the tuned thresholds in the model")
    add_trust(p)
    add_threads(p)
    p.set_defaults(fn=cmd_detect)

    p = command(sub, "stream", "online tagging: a line per chunk with its latency")
    add_model(p)
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="audio files or folders, each read block by block in turn")
    p.add_argument("--mic", action="store_true", help="listen to the microphone (earmark[mic])")
    p.add_argument("--device", default=None, help="input device for --mic")
    p.add_argument("--seconds", type=float, default=None, help="stop --mic after this long")
    add_chunk(p, "a line of labels for each", "a streaming model's own chunk, 1 s for a "
                                                 "full-context model")
    p.add_argument("--realtime", action="store_true", help="pace a file at real time")
    p.add_argument("--top-k", type=int, default=3, help="labels per chunk")
    p.add_argument("--tail", choices=("pad", "drop"), default="pad",
                   help="the last piece shorter than a chunk: zero-padded and scored, or "
                        "dropped")
    add_threads(p, 1, "one chunk rarely gains from more, and waiting OpenMP threads slow "
                      "it down badly on a busy machine")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the streaming model's chunk step (~30 s once, then faster)")
    add_trust(p)
    p.set_defaults(fn=cmd_stream)

    p = command(sub, "serve", "HTTP and WebSocket tagging with a web page that listens "
                                     "(earmark[serve])")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model or run directory, .onnx, a released model's name, or "
                        "NAME=PATH (default name: the directory's)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--token", default=None,
                   help="bearer token required on /v1/* and /metrics (or EARMARK_SERVE_TOKEN)")
    p.add_argument("--max-streams", type=int, default=64, help="open WebSocket streams at once")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest /v1/tag upload")
    p.add_argument("--max-stream-minutes", type=float, default=60.0,
                   help="longest stream (audio received or wall time)")
    add_chunk(p, "the labels of each, for full-context models (a streaming model keeps its "
                 "own)", "1 s")
    p.add_argument("--max-batch", type=int, default=64, help="stream chunks per model call")
    for name, (kind, default, text) in SERVE_LIMITS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"{text} (default {default:g})")
    add_threads(p)
    p.add_argument("--log-level", default="info", help="uvicorn's log level",
                   choices=("critical", "error", "warning", "info", "debug"))
    add_trust(p)
    add_offline(p)
    p.set_defaults(fn=cmd_serve)


def cmd_tag(a) -> int:
    from tqdm import tqdm

    from earmark.data.sources import audio_inputs
    from earmark.errors import AudioError, DataError
    from earmark.infer.chunks import iter_chunk_scores
    from earmark.infer.tagger import load
    from earmark.infer.writers import TagWriter

    tagger = load(a.model, trust_checkpoint=a.trust_checkpoint)
    problems: list[AudioError] = []
    try:
        files = audio_inputs(a.inputs, problems)
    except DataError as err:
        return error(str(err))
    failed = [str(e) for e in problems]
    out = TagWriter(a.format)  # each row is written as it comes: memory stays flat
    bar = tqdm(total=len(files), desc="tag", unit="file", file=sys.stderr,
               disable=not progress(a) or len(files) < 2)
    if a.chunk:
        for path in files:
            try:
                for c in iter_chunk_scores(tagger, path, a.chunk):
                    out.row(str(path), c.start, c.end, tagger.top(c.scores, a.top_k))
            except AudioError as err:
                failed.append(str(err))
            bar.update()
    else:  # decoded in background threads, scored in batches, written in order
        from earmark.infer.batch import tag_files

        for path, labels in tag_files(tagger, files, a.top_k, a.batch_size, a.workers):
            if isinstance(labels, AudioError):
                failed.append(str(labels))
            else:
                out.row(str(path), None, None, labels)
            bar.update()
    bar.close()
    out.close()
    return report_skipped(failed, len(files) + len(problems))


def cmd_detect(a) -> int:
    from earmark.audio.io import audio_info, find_audio_files
    from earmark.data.events import write_events
    from earmark.errors import AudioError
    from earmark.files import display_names
    from earmark.infer.detect import detection_config
    from earmark.infer.tagger import load

    tagger = load(a.model, trust_checkpoint=a.trust_checkpoint)
    config = detection_config(tagger, threshold=a.threshold, median_filter=a.median,
                              min_duration=a.min_duration, min_gap=a.min_gap,
                              label_map=a.label_map)
    if a.tune:
        from earmark.data.sources import from_spec

        config = tagger.tune_detection(from_spec(a.tune).split_or_all("valid"), config,
                                       chunk_seconds=a.chunk)
        print("tuned thresholds: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                              config.threshold.items()), file=sys.stderr)
        if a.save:
            from earmark.models.directory import model_dir_of
            from earmark.models.pretrained import resolve_model

            saved = tagger.save_detection(model_dir_of(resolve_model(a.model)), config)
            print(f"saved in {saved}", file=sys.stderr)
    problems: list[AudioError] = []
    files = find_audio_files(a.inputs, errors=problems)
    failed = [str(e) for e in problems]
    found, durations = {}, {}
    for path, name in zip(files, display_names(files)):
        try:
            found[name] = tagger.detect(path, config=config, chunk_seconds=a.chunk)
            durations[name] = audio_info(path).duration
        except AudioError as err:
            failed.append(str(err))
            continue
        for e in found[name]:
            print(f"{name}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}\t{e.score:.3f}",
                  flush=True)
    if a.out:
        print(f"wrote {write_events(a.out, found, keep_empty=False)}", file=sys.stderr)
    if a.plot and found:
        from earmark.evaluate.plots import plot_timeline

        print(f"wrote {plot_timeline(found, a.plot, durations)}", file=sys.stderr)
    return report_skipped(failed, len(files) + len(problems))


def chunk_line(result) -> str:
    """One line per chunk of a stream: its span, top labels and the time it took to score.

        >>> from types import SimpleNamespace as Result
        >>> chunk_line(Result(start=2.0, end=4.0, labels=[("Speech", 0.914), ("Music", 0.12)],
        ...                   latency_ms=3.41))
        '[   2.00-   4.00 s]  Speech 0.91  Music 0.12  (3.4 ms)'
    """
    labels = "  ".join(f"{label} {score:.2f}" for label, score in result.labels)
    return f"[{result.start:7.2f}-{result.end:7.2f} s]  {labels}  ({result.latency_ms:.1f} ms)"


def print_chunk(result) -> None:
    print(chunk_line(result), flush=True)


def cmd_stream(a) -> int:
    from earmark.infer.stream import stream_file, stream_mic
    from earmark.infer.tagger import load

    tagger = load(a.model, trust_checkpoint=a.trust_checkpoint)
    if a.mic:
        stream_mic(tagger, chunk_seconds=a.chunk, top_k=a.top_k, device=a.device,
                   seconds=a.seconds, on_result=print_chunk)
        return 0
    if not a.files:
        return error("give a FILE or --mic")
    from earmark.audio.io import find_audio_files
    from earmark.errors import AudioError

    problems: list[AudioError] = []
    files = find_audio_files(a.files, errors=problems)
    failed = [str(e) for e in problems]
    for path in files:
        if len(files) > 1:
            print(f"# {path}", flush=True)
        try:
            n = stream_file(tagger, path, chunk_seconds=a.chunk, realtime=a.realtime,
                            top_k=a.top_k, collect=False, tail=a.tail, compile=a.compile,
                            on_result=print_chunk)
        except AudioError as err:
            failed.append(str(err))
            continue
        print(f"{path}: {n} chunks", file=sys.stderr)
    return report_skipped(failed, len(files) + len(problems))


def cmd_serve(a) -> int:
    import os

    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        return error(f"serving needs FastAPI, uvicorn and prometheus_client ({err}); install "
                     "them with: pip install 'earmark[serve]'")
    from earmark.serve.app import ServeOptions, load_models, serve

    token = a.token or os.environ.get("EARMARK_SERVE_TOKEN") or None
    if a.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(f"warning: serving on {a.host} without a token: anyone who reaches this port "
              "can use the models (set --token or EARMARK_SERVE_TOKEN)", file=sys.stderr)
    limits = {k: getattr(a, k) for k in SERVE_LIMITS if getattr(a, k) is not None}
    options = ServeOptions(token=token, max_streams=a.max_streams,
                           max_upload_mb=a.max_upload_mb,
                           max_stream_minutes=a.max_stream_minutes, chunk_seconds=a.chunk,
                           max_batch=a.max_batch, **limits)
    models = load_models(a.models, trust_checkpoint=a.trust_checkpoint)
    for name, tagger in models.items():
        print(f"serving {name}: {len(tagger.labels)} labels, {tagger.sample_rate} Hz",
              file=sys.stderr)
    serve(models, a.host, a.port, options, log_level=a.log_level)
    return 0
