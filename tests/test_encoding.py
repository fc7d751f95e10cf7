"""medembed.encoding.encode: the same embeddings as sentence-transformers' own encode, in input order,
whichever way it gets there (tokenising workers, packed forward)."""

from __future__ import annotations

import pytest
import torch

from medembed.encoding import encode, tokenize_only

TEXTS = [
    "the symptoms of gout are described here : gout symptoms details number 4 .",
    "what causes lupus ?",
    "asthma",
    "what are the treatments for glaucoma ?",
    "the causes of rickets are described here : rickets causes details number 8 .",
    "",
    "what are the symptoms of anemia ?",
]


@pytest.fixture
def model(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    model.prompts = {"query": "what are the symptoms of ", "document": "details number "}
    return model


@pytest.mark.parametrize("kind", ["query", "document"])
@pytest.mark.parametrize("workers,packed", [(0, "off"), (2, "off"), (0, "on"), (2, "on")])
def test_encode_matches_sentence_transformers(model, kind, workers, packed):
    reference_method = model.encode_query if kind == "query" else model.encode_document
    reference = reference_method(TEXTS, batch_size=3, convert_to_tensor=True)
    ours = encode(model, TEXTS, kind, batch_size=3, show_progress_bar=False, packed_attention=packed, workers=workers)
    assert ours.dtype == torch.float32 and ours.shape == reference.shape
    assert torch.allclose(ours, reference.float(), atol=1e-5)


def test_encode_without_prompt_differs_from_with_prompt(model):
    # The prompt really is applied: dropping it changes the embeddings.
    with_prompt = encode(model, TEXTS, "query", batch_size=4, show_progress_bar=False)
    model.prompts = {}
    without = encode(model, TEXTS, "query", batch_size=4, show_progress_bar=False)
    assert not torch.allclose(with_prompt, without)


def test_encode_restores_training_mode_and_handles_empty_input(model):
    model.train()
    assert encode(model, [], "document", batch_size=4).shape == (0, 64)
    encode(model, TEXTS, "document", batch_size=4, show_progress_bar=False)
    assert model.training


def test_tokenize_only_sees_every_text(model):
    assert tokenize_only(model, TEXTS, "", batch_size=2, workers=0) == len(TEXTS)


# --- the packed-row graph path (graph_encoder.py), eager on CPU -------------------------------------------


@pytest.mark.parametrize("kind", ["query", "document"])
@pytest.mark.parametrize("workers,row_tokens", [(0, 64), (2, 64), (0, 4096)])
def test_graph_encoder_matches_sentence_transformers(model, kind, workers, row_tokens):
    from medembed import graph_encoder

    model.prompts = {"query": "what are the symptoms of ", "document": "details number "}
    texts = TEXTS * 5  # several rows, texts split across chunk boundaries by the small chunk size below
    reference_method = model.encode_query if kind == "query" else model.encode_document
    reference = reference_method(texts, batch_size=3, convert_to_tensor=True)
    old_chunk = graph_encoder.CHUNK_TEXTS
    graph_encoder.CHUNK_TEXTS = 4
    try:
        ours = encode(model, texts, kind, batch_size=3, show_progress_bar=False, graph="on", workers=workers,
                      row_tokens=row_tokens)
    finally:
        graph_encoder.CHUNK_TEXTS = old_chunk
    assert ours.dtype == torch.float32 and ours.shape == reference.shape
    assert torch.allclose(ours, reference.float(), atol=1e-5)
    # The model itself is left as it was: its own (padded) encode gives the same embeddings again.
    assert torch.equal(reference_method(texts, batch_size=3, convert_to_tensor=True), reference)


@pytest.mark.parametrize("pooling_mode", ["cls", "lasttoken"])
def test_graph_encoder_other_pooling_and_normalize(tiny_model_dir, pooling_mode):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    base = SentenceTransformer(str(tiny_model_dir), device="cpu")
    model = SentenceTransformer(modules=[base[0], Pooling(64, pooling_mode=pooling_mode), Normalize()], device="cpu")
    texts = [t for t in TEXTS if t]  # this tokenizer gives an empty text no tokens at all
    reference = model.encode(texts, batch_size=2, convert_to_tensor=True)
    ours = encode(model, texts, "document", batch_size=2, show_progress_bar=False, graph="on", row_tokens=32)
    assert torch.allclose(ours, reference.float(), atol=1e-5)


def test_pack_rows_layout():
    """Rows hold whole texts up to the token budget; positions restart per text; padding forms one more
    text and empty texts fill the slot bucket; every text appears once."""
    import numpy as np

    from medembed.graph_encoder import pack_rows, slot_bucket

    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 20, size=50).astype(np.int32)
    ids = [rng.integers(5, 100, size=n).astype(np.int32) for n in lengths]
    chunks = []
    for start in range(0, 50, 7):
        sl = slice(start, start + 7)
        chunks.append((np.arange(50)[sl], lengths[sl], np.concatenate(ids[sl]), None))
    rows = list(pack_rows(chunks, row_tokens=40, position_offset=2, pad_id=1))
    seen = np.concatenate([row["indices"] for row in rows])
    assert sorted(seen.tolist()) == list(range(50))
    for k, row in enumerate(rows):
        n, width, slots = row["n"], row["width"], row["slots"]
        assert row["tokens"] <= 40 or n == 1
        assert width == 40 or k == len(rows) - 1
        assert slots == slot_bucket(n) and row["cu"].shape == (slots + 2,)
        cu = row["cu"]
        assert cu[0] == 0 and (np.diff(cu) >= 0).all() and cu[-1] == width and cu[n] == row["tokens"]
        for j, text in enumerate(row["indices"]):
            a, b = cu[j], cu[j + 1]
            assert b - a == lengths[text] == row["lengths"][j]
            assert (row["ids"][a:b] == ids[text]).all()
            assert (row["positions"][a:b] == np.arange(b - a) + 2).all()
            assert (row["doc"][a:b] == j).all() and row["first"][j] == a and row["last"][j] == b - 1
        assert (row["doc"][row["tokens"]:] == slots).all() and (row["ids"][row["tokens"]:] == 1).all()


def test_graph_encoder_traces_as_one_graph(model):
    """The whole encoder + pooling traces without a graph break (fullgraph=True), as torch.compile needs
    for one compiled graph and one CUDA graph per row shape on the GPU."""
    from medembed import graph_encoder

    texts = [t for t in TEXTS if t] * 4
    reference = model.encode_document(texts, batch_size=3, convert_to_tensor=True)
    ours = encode(model, texts, "document", batch_size=3, show_progress_bar=False, graph="on",
                  graph_compile="aot_eager", row_tokens=64)
    assert torch.allclose(ours, reference.float(), atol=1e-5)
    assert getattr(model, graph_encoder._CACHE_ATTR).rows >= 2


def test_graph_encoder_is_cached_per_model_and_follows_max_seq_length(model):
    from medembed import graph_encoder

    texts = [t for t in TEXTS if t]
    encode(model, texts, "document", batch_size=3, show_progress_bar=False, graph="on")
    first = getattr(model, graph_encoder._CACHE_ATTR)
    encode(model, texts, "query", batch_size=3, show_progress_bar=False, graph="on")
    assert getattr(model, graph_encoder._CACHE_ATTR) is first  # one compiled encoder per model
    model.max_seq_length = 8  # truncation (and the attention length bound) change: a new encoder
    ours = encode(model, texts, "document", batch_size=3, show_progress_bar=False, graph="on")
    assert getattr(model, graph_encoder._CACHE_ATTR) is not first
    assert torch.allclose(ours, model.encode_document(texts, convert_to_tensor=True).float(), atol=1e-5)


def test_graph_encoder_keeps_its_tokenising_processes_across_calls(model):
    """The tokenising processes are forked once per model and reused by later calls (the second H200 run
    forked them per call); a new encoder (max_seq_length changed) stops the old ones."""
    from medembed import graph_encoder

    texts = [t for t in TEXTS if t] * 3
    first_out = encode(model, texts, "document", batch_size=3, show_progress_bar=False, graph="on", workers=2,
                       row_tokens=32)
    encoder = getattr(model, graph_encoder._CACHE_ATTR)
    pool = encoder.tokenizer_pool
    assert pool is not None and pool.workers == 2 and len(pool.pids) == 2
    again = encode(model, texts, "document", batch_size=3, show_progress_bar=False, graph="on", workers=2,
                   row_tokens=32)
    assert encoder.tokenizer_pool is pool and {p.pid for p in pool.pool._pool} == pool.pids
    assert torch.equal(first_out, again)
    queries = encode(model, texts, "query", batch_size=3, show_progress_bar=False, graph="on", workers=2, row_tokens=32)
    assert torch.allclose(queries, model.encode_query(texts, convert_to_tensor=True).float(), atol=1e-5)
    model.max_seq_length = 8
    encode(model, texts, "document", batch_size=3, show_progress_bar=False, graph="on", workers=2, row_tokens=32)
    assert pool.pool is None  # the old encoder's processes were stopped
    getattr(model, graph_encoder._CACHE_ATTR).close()


def test_chunk_sizes_start_small_and_cover_every_text():
    from medembed.graph_encoder import CHUNK_TEXTS, FIRST_CHUNK_TEXTS, chunk_sizes

    sizes = chunk_sizes(10_000, workers=8)
    assert sum(sizes) == 10_000 and sizes[:8] == [FIRST_CHUNK_TEXTS] * 8 and max(sizes) == CHUNK_TEXTS
    assert sizes == sorted(sizes[:-1]) + sizes[-1:]  # rounds grow, the last chunk holds what is left
    assert chunk_sizes(5, workers=2, largest=4) == [4, 1] and chunk_sizes(0, workers=2) == []
