"""Where an upload burst's memory stays: the served app's resident set after 12 uploads of
10 minutes (4 at a time) and 5 s idle, with and without ``malloc_trim`` after the last.

    python bench/serve_memory.py [--repeats 3]

Each measurement runs in a fresh process (``--one trim|keep``), the app through FastAPI's
test client with an untrained ``sat-tiny`` (2 s chunks, 527 outputs) as bench/serve.py
serves. Writes bench/results/serve_memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no /proc/self/status: Linux only")


def one(trim: bool) -> dict:
    import numpy as np
    import soundfile as sf
    import torch
    from fastapi.testclient import TestClient

    import earmark
    from earmark.infer.tagger import Tagger
    from earmark.serve import create_app, memory

    if not trim:
        memory.release = lambda: False
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = earmark.create_model("sat-tiny", 527, chunk_seconds=2.0).eval()
    tagger = Tagger(model, {"labels": [str(i) for i in range(527)]})
    buf = io.BytesIO()
    noise = 0.1 * np.random.default_rng(0).standard_normal(16000 * 600)
    sf.write(buf, noise.astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    data = buf.getvalue()
    with TestClient(create_app({"tiny": tagger})) as client:
        client.post("/v1/tag", content=data[:200_000])  # warm up with a short clip
        time.sleep(1)
        start = rss_mb()

        def post():
            for _ in range(3):
                assert client.post("/v1/tag", content=data).status_code == 200

        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(5)
        return {"trim": trim, "start_mb": round(start, 1), "after_mb": round(rss_mb(), 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", choices=("trim", "keep"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.one == "trim")))
        return
    runs = []
    for _ in range(a.repeats):
        for kind in ("keep", "trim"):
            out = subprocess.run([sys.executable, __file__, "--one", kind], check=True,
                                 capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    from earmark.files import write_json

    write_json(RESULTS / "serve_memory.json", {"runs": runs, "argv": sys.argv[1:]})
    print("\n| after the burst | start MB (median) | 5 s after the last upload MB (median) |")
    print("| --- | --- | --- |")
    for trim, name in ((False, "memory kept by the allocator"), (True, "malloc_trim(0)")):
        rows = [r for r in runs if r["trim"] == trim]
        print(f"| {name} | {statistics.median(r['start_mb'] for r in rows)} | "
              f"{statistics.median(r['after_mb'] for r in rows)} |")


if __name__ == "__main__":
    main()
