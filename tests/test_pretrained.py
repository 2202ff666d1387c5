"""Released checkpoints by name: pulled from a server, checked, converted, cached, tagged with.

No test reaches the internet: a small HTTP server on 127.0.0.1 serves a checkpoint in the
SAT repository's layout, made here from a randomly initialised SAT-T of one block, and the
release table gets a row that points at it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import threading
import time
from pathlib import Path

import pytest
import torch

import earmark
from earmark.cli import main
from earmark.errors import ModelError
from earmark.models import pretrained
from earmark.models.download import DownloadError, IntegrityError
from earmark.models.pretrained import Release, pull, resolve_model

NAME = "sat-test-audioset"
FILE = "SAT_T_test_stream1s.pt"


# ---- a file server on 127.0.0.1 ---------------------------------------------------------------


class Files:
    """What the server holds and what it saw: ``files`` path -> bytes; ``cut`` path -> bytes
    sent before the connection is cut (once); ``delay`` s per block sent."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.delay = 0.0
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()

    def gets(self, path: str) -> list[str | None]:
        with self.lock:
            return [rng for p, rng in self.requests if p == path]


def _handler(state: Files):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            path = self.path.split("?")[0]
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append((path, rng))
                data = state.files.get(path)
                cut = state.cut.pop(path, None)
            if data is None:
                self.send_error(404)
                return
            start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:] if cut is None else data[start:start + cut]
            for i in range(0, len(body), 1 << 16):
                self.wfile.write(body[i:i + (1 << 16)])
                if state.delay:
                    time.sleep(state.delay)
            # a cut connection: the handler returns and HTTP/1.0 closes it, short of its length

    return Handler


@pytest.fixture
def server():
    state = Files()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


# ---- an official-format checkpoint and its row ----------------------------------------------


def official_state(model) -> dict:
    """An earmark SAT state dict in the SAT repository's layout (tests/models/test_sat.py)."""
    from tests.models.test_sat import official_layout

    return official_layout(model, streaming=True)


def reference(num_classes: int = 527, seed: int = 0):
    torch.manual_seed(seed)
    return earmark.create_model("sat-tiny", num_classes, depth=1, chunk_seconds=1.0).eval()


def checkpoint_bytes(model) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": official_state(model)}, buffer)
    return buffer.getvalue()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty EARMARK_HOME, network allowed, no mirror."""
    monkeypatch.setenv("EARMARK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EARMARK_OFFLINE", raising=False)
    monkeypatch.delenv("EARMARK_MIRROR", raising=False)
    return tmp_path / "home"


@pytest.fixture
def served(server, cache, monkeypatch):
    """(server, row, reference model, file bytes): the row points at the server's file."""
    model = reference()
    data = checkpoint_bytes(model)
    server.files[f"/files/{FILE}"] = data
    row = Release(name=NAME, kind="sat-official", model="sat-tiny", file=FILE,
                  url=f"{server.base}/files/{FILE}?download=1", page=f"{server.base}/files",
                  paper_map=0.0, evaluation="none", licence="test",
                  args={"pooling": "mean", "depth": 1}, convert_args={"chunk_seconds": 1.0})
    monkeypatch.setitem(pretrained.RELEASES, NAME, row)
    return server, row, model, data


def use_row(monkeypatch, row: Release) -> Release:
    monkeypatch.setitem(pretrained.RELEASES, row.name, row)
    return row


def assert_weights_of(model_dir: Path, ref) -> None:
    loaded = earmark.load(model_dir).model
    own = loaded.state_dict()
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)


# ---- the tests --------------------------------------------------------------------------------


def test_pull_downloads_checks_converts_and_caches(served, cache):
    server, row, ref, data = served
    out = pull(NAME)
    assert out == cache / "models" / NAME
    assert (cache / "checkpoints" / FILE).read_bytes() == data
    # trusted on first use: the sha256 of the first download is recorded beside the file
    digest = hashlib.sha256(data).hexdigest()
    assert (cache / "checkpoints" / f"{FILE}.sha256").read_text() == f"{digest}  {FILE}\n"
    config = json.loads((out / "config.json").read_text())
    assert config["provenance"]["checkpoint_sha256"] == digest
    assert config["provenance"]["release"] == NAME
    assert config["labels"][0] == "Speech" and len(config["labels"]) == 527
    assert_weights_of(out, ref)
    assert not list((cache / "checkpoints").glob("*.part"))
    assert server.gets(f"/files/{FILE}") == [None]


def test_a_cached_model_needs_no_second_request(served, cache):
    server, row, ref, data = served
    first = pull(NAME)
    assert earmark.load(NAME).labels[:2] == ["Speech", "Male speech, man speaking"]
    assert pull(NAME) == first
    assert resolve_model(NAME) == first
    assert len(server.gets(f"/files/{FILE}")) == 1
    # with only the converted model left (the checkpoint removed), offline use still works
    (cache / "checkpoints" / FILE).unlink()
    assert resolve_model(NAME, offline_mode=True) == first


def test_a_download_cut_midway_resumes_with_a_range_request(served, cache):
    server, row, ref, data = served
    server.cut[f"/files/{FILE}"] = len(data) // 3
    pull(NAME)
    ranges = server.gets(f"/files/{FILE}")
    assert ranges == [None, f"bytes={len(data) // 3}-"]
    assert (cache / "checkpoints" / FILE).read_bytes() == data
    assert_weights_of(cache / "models" / NAME, ref)


def test_a_download_that_keeps_failing_keeps_its_part_for_the_next_try(served, cache,
                                                                       monkeypatch):
    server, row, ref, data = served
    from earmark.models import download as dl

    monkeypatch.setattr(dl, "ATTEMPTS", 1)  # one connection per call
    server.cut[f"/files/{FILE}"] = 1000
    with pytest.raises(DownloadError, match=r"failed after 1 attempts.*1000 bytes are kept"):
        pull(NAME)
    assert not (cache / "checkpoints" / FILE).exists()  # never a half file under its name
    assert (cache / "checkpoints" / f"{FILE}.part").stat().st_size == 1000
    pull(NAME)  # a later run asks for the rest
    assert server.gets(f"/files/{FILE}")[-1] == "bytes=1000-"
    assert (cache / "checkpoints" / FILE).read_bytes() == data


def test_a_pinned_sha256_mismatch_is_refused_and_the_file_set_aside(served, cache,
                                                                    monkeypatch):
    server, row, ref, data = served
    use_row(monkeypatch, dataclasses.replace(row, sha256="0" * 64, size=len(data)))
    with pytest.raises(IntegrityError, match=rf"{FILE}: sha256 [0-9a-f]{{64}} where earmark's "
                                             r"release table has 0{64}.*set aside as "):
        pull(NAME)
    folder = cache / "checkpoints"
    assert not (folder / FILE).exists() and not (folder / f"{FILE}.part").exists()
    [aside] = folder.glob(f"{FILE}.rejected-*")
    assert aside.read_bytes() == data
    assert not (cache / "models" / NAME).exists()
    # the right hash passes
    use_row(monkeypatch, dataclasses.replace(row, sha256=hashlib.sha256(data).hexdigest(),
                                             size=len(data)))
    assert_weights_of(pull(NAME), ref)


def test_a_file_that_changed_since_its_first_use_is_refused(served, cache):
    server, row, ref, data = served
    out = pull(NAME)
    # the converted weights are checked on every load
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(IntegrityError, match=r"model.safetensors: not the weights earmark "
                                             r"converted .*set aside"):
        earmark.load(NAME)
    assert not out.exists() and list((cache / "models").glob(f"{NAME}.rejected-*"))
    # converted again from the checked checkpoint, without a new download
    assert_weights_of(pull(NAME), ref)
    assert len(server.gets(f"/files/{FILE}")) == 1
    # a checkpoint that differs from the sha256 recorded at its first download
    (cache / "models" / f"{NAME}.json").unlink()
    checkpoint = cache / "checkpoints" / FILE
    checkpoint.write_bytes(checkpoint_bytes(reference(seed=1)))
    with pytest.raises(IntegrityError, match=r"where the sha256 recorded at its first "
                                             r"download .* has"):
        pull(NAME)
    assert not checkpoint.exists() and list(checkpoint.parent.glob(f"{FILE}.rejected-*"))


def test_offline_a_missing_file_is_an_error_saying_where_to_get_and_put_it(served, cache,
                                                                          monkeypatch,
                                                                          write_wav, capsys):
    server, row, ref, data = served
    monkeypatch.setenv("EARMARK_OFFLINE", "1")
    with pytest.raises(DownloadError) as err:
        earmark.load(NAME)
    text = str(err.value)
    assert f"{NAME}: {FILE} is not in earmark's cache" in text
    assert f"get {FILE} from {row.url}" in text
    assert f"put it at {cache / 'checkpoints' / FILE}" in text
    assert f"earmark pull {NAME} --file PATH" in text
    monkeypatch.delenv("EARMARK_OFFLINE")
    wav = write_wav("a.wav")
    assert main(["tag", NAME, str(wav), "--offline"]) == 2
    assert "is not in earmark's cache and the network is off" in capsys.readouterr().err
    assert server.requests == []
    # a name close to a released one is suggested, not taken for a missing folder
    with pytest.raises(ModelError, match=f"did you mean {NAME}"):
        earmark.load("sat-test")


def test_two_pulls_at_once_download_once(served, cache):
    server, row, ref, data = served
    server.delay = 0.02  # the first download lasts long enough for the second to wait
    start = threading.Barrier(2)
    results, errors = [], []

    def one():
        start.wait(timeout=10)
        try:
            results.append(pull(NAME))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert len(server.gets(f"/files/{FILE}")) == 1
    assert_weights_of(results[0], ref)


def test_a_mirror_serves_the_file_under_its_name_checked_the_same(served, cache,
                                                                  monkeypatch):
    server, row, ref, data = served
    server.files[f"/mirror/{FILE}"] = data
    monkeypatch.setenv("EARMARK_MIRROR", f"{server.base}/mirror/")
    assert_weights_of(pull(NAME), ref)
    assert server.gets(f"/mirror/{FILE}") == [None] and server.gets(f"/files/{FILE}") == []
    # a mirror without the file: the error says where else to get it
    other = use_row(monkeypatch, dataclasses.replace(row, name="sat-test-absent",
                                                     file="absent.pt"))
    with pytest.raises(DownloadError, match=r"sat-test-absent: http://127.0.0.1:\d+/mirror/"
                                            r"absent.pt: HTTP 404 .*; or get absent.pt from "):
        pull(other.name)
    # a mirror with another file than the one pinned is refused by the same check
    server.files["/mirror/pinned.pt"] = checkpoint_bytes(reference(seed=1))
    other = use_row(monkeypatch, dataclasses.replace(
        row, name="sat-test-pinned", file="pinned.pt", sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(IntegrityError, match=r"pinned.pt: sha256 .* set aside .*from "
                                             r"http://127.0.0.1:\d+/mirror/pinned.pt"):
        pull(other.name)


def test_tagging_by_name_from_python_and_the_command_line(served, cache, write_wav, capsys):
    server, row, ref, data = served
    wav = write_wav("tone.wav", seconds=2.0)
    tagger = earmark.load(NAME)
    top = tagger.tag(wav, top_k=3)
    assert len(top) == 3 and all(label in tagger.labels for label, _ in top)
    assert main(["tag", NAME, str(wav), "--format", "json", "--top-k", "3"]) == 0
    [row_out] = json.loads(capsys.readouterr().out)
    assert [label for label, _ in top] == [item["label"] for item in row_out["labels"]]
    assert len(server.gets(f"/files/{FILE}")) == 1
    # the lists
    assert main(["models", "--pretrained", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[NAME]["cached"] == "converted"
    assert rows["sat-tiny-2s-audioset"]["file"] == "SAT_T_stream2s_mAP_43_34.pt"
    assert rows["htsat-audioset"]["download"].startswith("browser")


def test_every_command_that_takes_a_model_takes_a_name(served, cache, write_wav, capsys):
    server, row, ref, data = served
    wav = write_wav("tone.wav", seconds=2.0)
    assert main(["stream", NAME, str(wav), "--top-k", "1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # two 1 s chunks
    assert main(["profile", NAME, "--repeats", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == sum(
        p.numel() for p in ref.parameters())
    assert len(server.gets(f"/files/{FILE}")) == 1


def test_a_checkpoint_that_does_not_fit_names_the_key_and_both_shapes(served, cache):
    server, row, ref, data = served
    server.files[f"/files/{FILE}"] = checkpoint_bytes(reference(num_classes=10))
    with pytest.raises(ModelError, match=r"does not fit sat-test-audioset \(sat-tiny, 527 "
                                         r"classes\): outputlayer.1.weight is \(10, 192\) in "
                                         r"the file, \(527, 192\) in sat-tiny"):
        pull(NAME)
    assert not (cache / "models" / NAME).exists()


def test_a_file_from_a_browser_is_taken_with_pull_file(served, cache, monkeypatch, tmp_path,
                                                       capsys):
    server, row, ref, data = served
    manual = use_row(monkeypatch, dataclasses.replace(row, url=None))
    with pytest.raises(DownloadError, match=r"needs a browser; get .* from .*/files and put it "
                                            r"at .*--file PATH"):
        pull(manual.name)
    given = tmp_path / "downloads" / FILE
    given.parent.mkdir()
    given.write_bytes(data)
    assert main(["pull", NAME, "--file", str(given)]) == 0
    assert "sha256 recorded at first use" in capsys.readouterr().out
    assert_weights_of(cache / "models" / NAME, ref)
    assert server.requests == []


# ---- the released SAT-T 2 s against the SAT README -----------------------------------------

# SAT README (RicherMans/SAT): `python3 inference.py samples/jkLRith2wcc.wav` with SAT_T_2s
README_TOP3 = [
    [("Stream", 0.9582), ("Trickle, dribble", 0.1661), ("Boat, Water vehicle", 0.1254)],
    [("Stream", 0.8668), ("Ocean", 0.3082), ("Waves, surf", 0.2931)],
    [("Stream", 0.8928), ("Trickle, dribble", 0.1404), ("Boat, Water vehicle", 0.1306)],
    [("Stream", 0.8503), ("Trickle, dribble", 0.1666), ("Raindrop", 0.1620)],
    [("Stream", 0.8594), ("Raindrop", 0.4584), ("Rain", 0.1884)],
]


def test_the_released_sat_tiny_2s_gives_the_sat_readme_top3():
    from earmark.infer.chunks import iter_chunk_scores

    r = pretrained.RELEASES["sat-tiny-2s-audioset"]
    sample = pretrained.home() / "samples" / pretrained.SAT_SAMPLE
    have_model = (pretrained.checkpoint_path(r).is_file()
                  or pretrained.cache_state(r) == "converted")
    if not have_model or not sample.is_file():
        pytest.skip(f"needs {r.file} in {pretrained.home() / 'checkpoints'} (earmark pull "
                    f"{r.name}) and the SAT README's sample at {sample} (from "
                    f"{pretrained.SAT_SAMPLE_URL})")
    tagger = earmark.load(pretrained.resolve_model(r.name, offline_mode=True))
    chunks = [tagger.top(c.scores, 3) for c in iter_chunk_scores(tagger, sample, 2.0)]
    assert len(chunks) == len(README_TOP3)
    for got, want in zip(chunks, README_TOP3):
        assert [label for label, _ in got] == [label for label, _ in want]
        for (_, score), (_, published) in zip(got, want):
            assert abs(score - published) < 2e-3
