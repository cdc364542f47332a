"""The chat scorer's sentence embeddings against sentence-transformers' own output for the shared
all-MiniLM-L6-v2 (reference_texts.jsonl / reference_embeddings.npy in ../shared/models)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from optbench import embeddings
from optbench.embeddings import Embedder, cosine_similarity, find_onnxruntime_library
from optbench.exceptions import ConfigError, OptbenchError


@pytest.fixture(scope="module")
def model_dir(shared_dir):
    return shared_dir / "models" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def references(model_dir):
    rows = [json.loads(line) for line in (model_dir / "reference_texts.jsonl").read_text().splitlines()]
    return rows, np.load(model_dir / "reference_embeddings.npy")


@pytest.fixture(scope="module")
def embedder(model_dir):
    return Embedder(model_dir)


@pytest.fixture(scope="module")
def encoded(embedder, references):
    """The 200 reference texts encoded once with the defaults (the slow part of this file)."""
    rows, _ = references
    return embedder.encode([r["text"] for r in rows])


def test_onnxruntime_library_is_found_without_importing_it(monkeypatch):
    import sys

    monkeypatch.delenv("ORT_DYLIB_PATH", raising=False)
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    path = find_onnxruntime_library()
    assert path.is_file() and path.name.startswith("libonnxruntime.so.")
    assert "onnxruntime" not in sys.modules


def test_token_ids_match_sentence_transformers(embedder, references):
    rows, _ = references
    got = embedder.tokenize([r["text"] for r in rows])
    for row, ids in zip(rows, got, strict=True):
        assert ids == row["input_ids"], row["text"][:80]


def test_embeddings_match_sentence_transformers(embedder, encoded, references):
    rows, reference = references
    assert encoded.dtype == np.float32 and encoded.shape == (len(rows), 384) == reference.shape
    assert embedder.dim == 384 and embedder.max_length == 256
    cos = cosine_similarity(encoded, reference)
    worst = int(np.argmin(cos))
    max_abs = float(np.abs(encoded - reference).max())
    print(f"min cosine {cos.min():.12f} (text {worst}), max abs diff {max_abs:.3e}")
    assert cos.min() >= 0.99999, rows[worst]["text"][:80]
    assert max_abs < 1e-5
    np.testing.assert_allclose(np.linalg.norm(encoded, axis=1), 1.0, atol=1e-6)


def test_order_and_batch_size_do_not_change_results(embedder, encoded, references):
    rows, _ = references
    # A mix of edge cases and chat turns in a shuffled order. (Padding next to the 256-token text
    # is covered by `encoded` itself: its first batch of 32 pads to 256.)
    picked = [0, 3, 4, 5, 8, 12, 14, 20, 30, 45, 60, 77, 90, 101, 130, 150, 170, 199]
    random.Random(7).shuffle(picked)
    texts = [rows[i]["text"] for i in picked]
    for batch_size in (1, 5, 64):
        got = embedder.encode(texts, batch_size=batch_size)
        np.testing.assert_allclose(got, encoded[picked], rtol=0, atol=1e-6, err_msg=f"batch_size={batch_size}")


def test_empty_and_long_texts(embedder):
    long_text = "The quick brown fox jumps over the lazy dog. " * 200
    ids = embedder.tokenize(["", long_text])
    assert ids[0] == [101, 102]
    assert len(ids[1]) == 256 and ids[1][0] == 101 and ids[1][-1] == 102
    out = embedder.encode(["", long_text, long_text + " and more words after the cut"])
    assert out.shape == (3, 384) and np.isfinite(out).all()
    # Truncation at 256 tokens: what comes after the cut cannot matter.
    np.testing.assert_array_equal(out[1], out[2])
    assert embedder.encode([]).shape == (0, 384)


def test_similarity_and_cosine_helper(embedder):
    sims = embedder.similarity(
        ["A cat sits on the mat.", "I like pizza."], ["A cat is on a mat.", "Stock markets fell."]
    )
    assert sims.shape == (2,) and sims[0] > 0.8 and sims[1] < 0.3
    a = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [1.0, 0.0, -1.0])
    assert float(cosine_similarity(a[0], b[0])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cosine_similarity(np.ones(3), np.ones(4))
    with pytest.raises(ConfigError, match="one reference per answer"):
        embedder.similarity(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="list of strings"):
        embedder.encode("one string")
    with pytest.raises(ConfigError, match="batch_size"):
        embedder.encode(["a"], batch_size=0)


def test_aencode_keeps_the_event_loop_free(embedder):
    import asyncio

    texts = ["hello there", "general kenobi"] * 16

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.create_task(ticker())
        got = await embedder.aencode(texts)
        t.cancel()
        return got, ticks

    got, ticks = asyncio.run(main())
    np.testing.assert_array_equal(got, embedder.encode(texts))
    assert ticks >= 2  # the loop ran while ONNX Runtime computed


def test_missing_or_broken_model_is_a_clear_error(tmp_path, model_dir):
    with pytest.raises(ConfigError, match="does not exist"):
        Embedder(tmp_path / "no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="model.onnx"):
        Embedder(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ConfigError, match="tokenizer.json"):
        Embedder(broken)
    (broken / "tokenizer.json").symlink_to(model_dir / "tokenizer.json")
    with pytest.raises(OptbenchError, match="model: cannot load .*model.onnx"):
        Embedder(broken)


def test_missing_onnxruntime_is_a_clear_error(monkeypatch, model_dir):
    monkeypatch.delenv("ORT_DYLIB_PATH", raising=False)
    monkeypatch.setattr(embeddings.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r'pip install "onnxruntime>=1\.31,<2"'):
        Embedder(model_dir)
    monkeypatch.setenv("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.32.0")
    with pytest.raises(ConfigError, match="ORT_DYLIB_PATH"):
        find_onnxruntime_library()
    with pytest.raises(ConfigError, match="pip install"):
        Embedder(model_dir, onnxruntime_library="/nonexistent/libonnxruntime.so.1.32.0")


def test_hub_model_is_downloaded_once_through_snapshot_download(monkeypatch, model_dir, tmp_path):
    calls = []

    def fake_download(repo_id, *, revision, cache_dir, allow_patterns):
        calls.append((repo_id, revision, cache_dir, allow_patterns))
        return str(model_dir)

    monkeypatch.setattr(embeddings, "_snapshot_download", fake_download)
    monkeypatch.chdir(tmp_path)  # so that the id cannot be a local folder by accident
    hub = Embedder("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path, revision="main", threads=1)
    assert calls == [("sentence-transformers/all-MiniLM-L6-v2", "main", tmp_path, list(embeddings.HUB_FILES))]
    assert "onnx/model.onnx" in calls[0][3] and "tokenizer.json" in calls[0][3]
    assert hub.model_path == model_dir / "model.onnx"
    assert hub.encode(["a cat"]).shape == (1, 384)


def test_hub_failures_are_config_errors(monkeypatch, tmp_path):
    def offline(repo_id, **kwargs):
        raise OSError("we are offline")

    monkeypatch.setattr(embeddings, "_snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="cannot download .*we are offline.*local folder"):
        Embedder("someone/some-model")
    with pytest.raises(ConfigError, match="does not exist"):
        Embedder("./not/here")


def test_model_folder_in_hub_layout(tmp_path, model_dir):
    # The hub keeps the ONNX file in onnx/; link the files rather than copy them.
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").symlink_to(model_dir / "model.onnx")
    (tmp_path / "tokenizer.json").symlink_to(model_dir / "tokenizer.json")
    e = Embedder(tmp_path, threads=1)
    assert e.model_path == tmp_path / "onnx" / "model.onnx"
    assert e.tokenize(["The Cat!"]) == [[101, 1996, 4937, 999, 102]]
