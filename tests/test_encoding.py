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
