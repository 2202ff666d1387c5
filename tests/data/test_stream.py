"""Streaming training clips from tar shards: exact and balanced epochs, even slots, repeatable."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

from earmark.data.dataset import ClipDataset
from earmark.data.manifest import Item, Manifest
from earmark.data.shards import load, write_shards
from earmark.data.stream import ShardStream, deal


def make_shards(tmp_path, n=20, per_shard=None, classes=("dog", "rain"), multi=False, seed=0):
    """``n`` clips of 0.1 s whose first sample encodes the clip's number, written to shards."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        path = tmp_path / "audio" / f"c{i:03d}.wav"
        path.parent.mkdir(exist_ok=True)
        x = 0.05 * rng.standard_normal(1600)
        x[0] = i / 1000
        sf.write(path, x, 16000, subtype="PCM_16")
        labels = (classes[0],) if i % 5 == 0 else (classes[1],)  # dog rare: 1 in 5
        items.append(Item(str(path), labels, split="test" if i >= n - 2 else "train"))
    m = Manifest(items, list(classes), multi_label=multi, name="clips")
    clip_bytes = 3300  # about one clip's FLAC and JSON
    write_shards(m, tmp_path / "shards", shard_size=(per_shard or 4) * clip_bytes)
    return load(str(tmp_path / "shards"))


def number(wave):
    return round(float(wave[0]) * 1000)


def test_deal_balances_clips_over_slots():
    assert deal([5, 3, 3, 2, 1], 2) == [[0, 3], [1, 2, 4]]  # 7 and 7 clips
    assert deal([4, 4, 4], 3) == [[0], [1], [2]]


def test_the_manifest_view_reads_clips_by_random_access(tmp_path):
    m = make_shards(tmp_path)
    assert len(m) == 20 and m.labels == ["dog", "rain"] and len(m.meta["shards"]) > 2
    assert sum(s["splits"].get("test", 0) for s in m.meta["shards"]) == 2
    ds = ClipDataset(m, 16000, 0.1)
    assert [number(ds[i][0]) for i in range(20)] == list(range(20))  # in the manifest's order


@pytest.mark.parametrize("world_size,workers", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_exact_epoch_gives_every_clip_and_every_slot_the_same_count(tmp_path, world_size, workers):
    m = make_shards(tmp_path)  # 18 train clips in shards of about 4
    ds = ShardStream(m.split("train"), 16000, 0.1, batch_size=2, seed=1, buffer=3)
    seen, counts = Counter(), []
    for rank in range(world_size):
        for w in range(workers):
            got = [number(x) for x, _ in ds.slot_items(rank, world_size, w, workers, epoch=0)]
            counts.append(len(got))
            seen.update(got)
    assert set(seen) == set(range(18))  # every training clip, no test clip
    assert len(set(counts)) == 1 and counts[0] % 2 == 0  # same whole number of batches
    assert sum(counts) - 18 < world_size * workers * (2 + 4)  # repeats: batch and shard rounding


def test_an_even_split_sees_every_clip_exactly_once(tmp_path):
    m = make_shards(tmp_path, n=18, per_shard=2)  # 16 train clips, 2 per shard
    ds = ShardStream(m.split("train"), 16000, 0.1, batch_size=2, seed=0)
    seen = Counter(number(x) for rank in range(2) for x, _ in ds.slot_items(rank, 2, 0, 1))
    assert sorted(seen) == list(range(16)) and set(seen.values()) == {1}


def test_targets_epochs_and_seeds(tmp_path):
    m = make_shards(tmp_path)
    ds = ShardStream(m.split("train"), 16000, 0.1, batch_size=2, seed=1, buffer=4)
    a = [(number(x), t.tolist()) for x, t in ds.slot_items(0, 1, 0, 1, epoch=0)]
    assert all(t == ([1.0, 0.0] if n % 5 == 0 else [0.0, 1.0]) for n, t in a)
    again = [(number(x), t.tolist()) for x, t in ds.slot_items(0, 1, 0, 1, epoch=0)]
    other = [number(x) for x, _ in ds.slot_items(0, 1, 0, 1, epoch=1)]
    assert a == again and [n for n, _ in a] != other  # repeatable, and shuffled anew


def test_a_dataloader_with_workers_yields_len_batches(tmp_path):
    m = make_shards(tmp_path)
    ds = ShardStream(m.split("train"), 16000, 0.1, batch_size=4, seed=0)
    ds.workers = 2
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert len(batches) == len(loader) and all(b[0].shape == (4, 1600) for b in batches)
    assert {number(x) for b in batches for x in b[0]} == set(range(18))


def test_balanced_epochs_draw_rare_classes_as_often_as_frequent_ones(tmp_path):
    m = make_shards(tmp_path, n=202, per_shard=20, multi=True)
    ds = ShardStream(m.split("train"), 16000, 0.1, batch_size=8, seed=0, balanced=True, buffer=50)
    labels = Counter()
    for epoch in range(3):
        for _, t in ds.slot_items(0, 1, 0, 1, epoch=epoch):
            labels[int(t.argmax())] += 1
    share = labels[0] / sum(labels.values())
    assert 0.4 < share < 0.6  # dog is 1 in 5 clips but about half the draws


@pytest.fixture
def web(tmp_path):
    """An http server on 127.0.0.1 serving tmp_path (http.server: no range requests)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 10
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_records_give_each_clip_s_bytes_in_the_shard(tmp_path):
    import json

    from earmark.audio.packed import decode_bytes

    make_shards(tmp_path)
    record = json.loads((tmp_path / "shards" / "shard-000000.json").read_text())
    data = (tmp_path / "shards" / "shard-000000.tar").read_bytes()
    for meta in record["samples"]:
        x, _ = decode_bytes(data[meta["offset"]:meta["offset"] + meta["size"]], "clip")
        assert number(x[:, 0]) == int(meta["key"])


def test_shards_served_over_http_read_and_stream_like_files(tmp_path, web):
    from earmark.audio.io import load_audio

    local = make_shards(tmp_path)
    remote = load(f"{web}/shards/")
    assert remote.labels == local.labels and len(remote) == len(local) == 20
    assert remote.items[3].path.startswith(f"{web}/shards/shard-")
    for a, b in zip(local.items[:5], remote.items[:5]):  # by range, from the records' offsets
        assert a.labels == b.labels and torch.equal(load_audio(a.path)[0], load_audio(b.path)[0])
    n = len(local.meta["shards"])
    pattern = load(f"{web}/shards/shard-{{000000..{n - 1:06d}}}.tar")
    assert [it.path for it in pattern.items] == [it.path for it in remote.items]
    ds = ShardStream(remote.split("train"), 16000, 0.1, batch_size=2, seed=0)
    assert sorted(number(x) for x, _ in ds.slot_items(0, 1, 0, 1)) == list(range(18))
