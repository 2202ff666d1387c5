"""Training on shards across processes: two gloo ranks on CPU, as across machines."""

from __future__ import annotations

import json
import os
import socket
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from earmark.data.manifest import Item, Manifest
from earmark.data.shards import load, write_shards
from earmark.data.stream import ShardStream
from earmark.train.config import TrainConfig
from earmark.train.run import train

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_stride": [16, 8]}


def numbered_shards(root, n, per_shard, test=4):
    """``n`` clips of 0.25 s, two classes, whose first sample encodes the clip's number; the
    last ``test`` are the test split; shards of about ``per_shard`` clips."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        path = root / "audio" / f"c{i:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(4000) / 16000
        x = 0.3 * np.sin(2 * np.pi * (300 if i % 2 else 1200) * t) + 0.01 * rng.standard_normal(4000)
        x[0] = i / 1000
        sf.write(path, x, 16000, subtype="PCM_16")
        items.append(Item(str(path), ("low" if i % 2 else "high",),
                          split="test" if i >= n - test else "train"))
    m = Manifest(items, ["high", "low"], name="numbered")
    # a clip is about 8 kB as FLAC: a shard size of 1 byte writes one clip per shard
    write_shards(m, root / "shards", shard_size=1 if per_shard == 1 else per_shard * 8200)
    return root / "shards"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, shards: str, out: str, workers: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = ShardStream(load(shards).split("train"), 16000, 0.25, batch_size=4, seed=3)
        ds.workers = workers
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        seen = [round(float(x[0]) * 1000) for batch, _ in loader for x in batch]
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump({"seen": seen, "len": len(loader)}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("per_shard,workers", [(1, 1), (1, 2), (3, 2)])
def test_two_ranks_see_every_clip_of_an_epoch_once(tmp_path, per_shard, workers):
    # 32 training clips; shards of 1 deal evenly (exactly once), shards of about 3 do not
    shards = numbered_shards(tmp_path, 36, per_shard)
    mp.spawn(_rank, args=(2, free_port(), str(shards), str(tmp_path), workers), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    seen = Counter(n for r in ranks for n in r["seen"])
    assert set(seen) == set(range(32))  # every training clip, no test clip
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 4 * ranks[0]["len"]  # equal batches
    if per_shard == 1:
        assert set(seen.values()) == {1}
    else:  # uneven: the repeats only even out the ranks' whole batches
        assert sum(seen.values()) - 32 < 2 * workers * (4 + 3)


def config(shards, out, **kw):
    base = dict(data=f"shards:{shards}", out=str(out), model="vit-tiny", model_args=TINY,
                clip_seconds=0.25, epochs=2, batch_size=4, lr=3e-3, warmup_epochs=0,
                progress=False, seed=0, accelerator="cpu", shuffle_buffer=8)
    return TrainConfig(**{**base, **kw})


@pytest.mark.timeout(240)
def test_training_streams_shards_on_one_and_on_two_uneven_ranks(tmp_path, capfd):
    shards = numbered_shards(tmp_path, 40, 5)  # 36 clips: 32 train (valid carved out), 4 test
    one = train(config(shards, tmp_path / "one"))
    assert (tmp_path / "one" / "model" / "model.safetensors").is_file()
    assert one["epochs"] == 2 and "accuracy" in one["test"]
    capfd.readouterr()
    # uneven shards on two ranks finish (a rank short of batches would leave DDP waiting)
    two = train(config(shards, tmp_path / "two", devices=2, num_workers=1))
    assert two["world_size"] == 2 and two["epochs"] == 2
    # without progress bars the first rank alone writes a line per epoch
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert two["steps"] < one["steps"]  # each rank streams about half the clips
    # the two ranks validated a share each, every validation clip once: the logged score is
    # the last weights' score on the whole validation set, computed here in one process
    import csv

    from earmark.evaluate.metrics import mean_average_precision
    from earmark.models.directory import load_checkpoint
    from earmark.train.stages import prepare_run

    setup = prepare_run(config(shards, tmp_path / "check", devices=2))
    valid = setup.valid_loader.dataset
    assert len(valid) % 2 == 1  # an odd count: padded shares would repeat one clip
    model = setup.model.eval()
    model.load_state_dict({k.removeprefix("model."): v for k, v in load_checkpoint(
        tmp_path / "two" / "checkpoints" / "last.ckpt")["state_dict"].items()})
    with torch.no_grad():
        scores = torch.cat([model.activation(model(x)) for x, _ in
                            torch.utils.data.DataLoader(valid, batch_size=4)]).numpy()
    targets = torch.stack([valid[i][1] for i in range(len(valid))]).numpy()
    with open(tmp_path / "two" / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/mAP")]
    assert float(rows[-1]["val/clips"]) == len(valid)  # no clip twice
    assert float(rows[-1]["val/mAP"]) == pytest.approx(mean_average_precision(scores, targets),
                                                        abs=1e-5)


class Crash(RuntimeError):
    pass


@pytest.mark.timeout(240)
def test_a_run_killed_mid_epoch_resumes(tmp_path, monkeypatch):
    shards = numbered_shards(tmp_path, 40, 5)
    cfg = config(shards, tmp_path / "run", epochs=3)
    items = ShardStream.slot_items

    def dying(self, *args, **kw):  # the machine goes away half-way through the second epoch
        for k, item in enumerate(items(self, *args, **kw)):
            if self.epoch == 1 and k == 10:
                raise Crash("killed")
            yield item

    monkeypatch.setattr(ShardStream, "slot_items", dying)
    with pytest.raises(Crash):
        train(cfg)
    epochs = []

    def recording(self, *args, **kw):  # the epochs the resumed run streams
        epochs.append(self.epoch)
        return items(self, *args, **kw)

    monkeypatch.setattr(ShardStream, "slot_items", recording)
    result = train(cfg, resume=True)
    assert result["epochs"] == 3
    assert sorted(set(epochs)) == [1, 2]  # the killed epoch again, then the last; not epoch 0


def test_evaluation_on_shards_scores_every_clip_once_as_on_the_files(tmp_path):
    from earmark.audio.io import load_audio
    from earmark.evaluate.run import evaluate_model
    from earmark.models.directory import save_model_dir
    from earmark.models.registry import create_model

    shards = numbered_shards(tmp_path, 24, 4, test=10)
    torch.manual_seed(0)
    model = create_model("vit-tiny", 2, clip_seconds=0.25, **TINY).eval()
    model_dir = save_model_dir(model, tmp_path / "model", ["high", "low"], {})
    from_shards = load(str(shards)).split("test")
    files = Manifest([Item(str(tmp_path / "audio" / f"c{i:03d}.wav"), ("low" if i % 2 else
                                                                       "high",), split="test")
                      for i in range(14, 24)], ["high", "low"])
    assert [round(float(load_audio(it.path)[0][0]) * 1000) for it in from_shards] == list(
        range(14, 24))  # each test clip once, in order
    got = evaluate_model(model_dir, from_shards, progress=False)
    want = evaluate_model(model_dir, files, progress=False)
    assert not got["failed"] and got["confusion_matrix"] == want["confusion_matrix"]
    assert sum(map(sum, got["confusion_matrix"])) == 10
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9)
    assert got["mAP"] == pytest.approx(want["mAP"], abs=1e-6)  # the same 16-bit samples


@pytest.mark.timeout(300)
def test_two_machines_started_by_torchrun_train_one_run(tmp_path):
    """Two torchrun launches on this machine stand for two nodes of one process each."""
    import subprocess
    import sys

    shards = numbered_shards(tmp_path, 40, 5)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
         "-m", "earmark", "train", "--data", f"shards:{shards}", "--model", "vit-tiny",
         "--model-arg", "depth=1", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2",
         "--clip-seconds", "0.25", "--epochs", "2", "--batch-size", "4", "--devices", "1",
         "--num-nodes", "2", "--accelerator", "cpu", "--no-progress",
         "--out", str(tmp_path / "run")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in (0, 1)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "test accuracy" in outputs[0] and "test accuracy" not in outputs[1]  # rank 0 reports
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result["world_size"] == 2 and result["epochs"] == 2


def test_tag_scores_every_clip_of_a_shard_set_and_single_members(tmp_path, capsys):
    from earmark.cli import main
    from earmark.models.directory import save_model_dir
    from earmark.models.registry import create_model

    shards = numbered_shards(tmp_path, 6, 3, test=0)
    model = create_model("vit-tiny", 2, clip_seconds=0.25, **TINY).eval()
    save_model_dir(model, tmp_path / "model", ["high", "low"], {})
    member = load(str(shards)).items[4].path
    assert main(["tag", str(tmp_path / "model"), f"shards:{shards}", member, "--format", "json",
                 "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 7 and rows[6]["file"] == member == rows[4]["file"]
    assert rows[6]["labels"] == rows[4]["labels"]
    assert main(["tag", str(tmp_path / "model"), f"{shards}/shard-000000.tar#999999999",
                 "--no-progress"]) == 1
    assert "no audio member with this key" in capsys.readouterr().err


def _torchrun(shards, out, port, *extra):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "earmark", "train",
         "--data", f"shards:{shards}", "--model", "vit-tiny", "--model-arg", "depth=1",
         "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2", "--clip-seconds", "0.25",
         "--batch-size", "2", "--devices", "2", "--accelerator", "cpu",
         "--no-progress", "--out", str(out), *extra],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


def processes_with(marker: str) -> list[int]:
    """Process ids whose command line holds ``marker`` (Linux /proc)."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.timeout(300)
def test_two_ranks_killed_mid_run_resume_from_the_last_epoch(tmp_path):
    import csv
    import signal
    import time

    from earmark.models.directory import load_checkpoint

    shards = numbered_shards(tmp_path, 40, 5)
    out = tmp_path / "run"
    first = _torchrun(shards, out, free_port(), "--epochs", "100000")  # never ends by itself
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 200
    try:
        while not last.is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # into a later epoch
    finally:  # the machines go away: torchrun and both ranks die without a clean shutdown
        for pid in [first.pid, *processes_with(str(out))]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        first.communicate(timeout=60)
    assert last.is_file() and not (out / "metrics.json").exists()
    done = load_checkpoint(last)["epoch"] + 1  # whole epochs in the last checkpoint
    second = _torchrun(shards, out, free_port(), "--resume", "--epochs", str(done + 2))
    output = second.communicate(timeout=240)[0]
    assert second.returncode == 0, output
    result = json.loads((out / "metrics.json").read_text())
    assert result["epochs"] == done + 2 and result["world_size"] == 2
    with open(out / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = {int(r["epoch"]) for r in rows if r.get("epoch")}
    assert set(range(done + 2)) <= epochs  # the log keeps the epochs before the kill
    trained = [int(r["epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert all(trained.count(e) <= 1 for e in range(done))  # resumed, not trained again
