"""Packed (padding-free) forward: same embeddings and gradients as the padded model, for BERT- and
XLM-R-style position numbering, and it leaves no trace in the saved model."""

from __future__ import annotations

import json

import pytest
import torch

from medembed import packing

TEXTS = [
    "what are the symptoms of anemia ?",
    "gout",
    "the treatments of asthma are described here : asthma treatments details number 1 .",
    "what causes lupus ?",
]


@pytest.fixture
def tiny(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_model_dir), device="cpu")


@pytest.fixture
def tiny_xlmr(tmp_path, tiny_model_dir):
    """XLM-R layout (positions from padding_idx + 1) with the tiny model's tokenizer."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    config = XLMRobertaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=128, max_position_embeddings=130, pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    XLMRobertaModel(config).save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    return SentenceTransformer(modules=[Transformer(str(tmp_path / "hf"), max_seq_length=64), Pooling(64, "mean")], device="cpu")


def embed(model, texts, grad=False):
    features = model.preprocess(texts)
    with torch.set_grad_enabled(grad):
        return model(features)["sentence_embedding"]


@pytest.mark.parametrize("model_name", ["tiny", "tiny_xlmr"])
def test_packed_forward_matches_padded(model_name, request):
    model = request.getfixturevalue(model_name).eval()
    padded = embed(model, TEXTS)
    packing.enable(model)
    packed = embed(model, TEXTS)
    assert packing.is_enabled(model)
    assert torch.allclose(packed, padded, atol=1e-5), (packed - padded).abs().max()
    # Padding really is gone: the encoder saw one row holding only the real tokens.
    seen = {}
    hook = model[0].auto_model.embeddings.register_forward_hook(lambda m, a, out: seen.update(shape=out.shape))
    embed(model, TEXTS)
    hook.remove()
    real_tokens = int(model.preprocess(TEXTS)["attention_mask"].sum())
    assert seen["shape"][:2] == (1, real_tokens)


def test_packed_gradients_match_padded(tiny_xlmr):
    model = tiny_xlmr.eval()  # no dropout: both paths must then be the same function

    def grads():
        model.zero_grad()
        emb = embed(model, TEXTS, grad=True)
        (emb @ emb.T).logsumexp(dim=1).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    padded = grads()
    packing.enable(model)
    packed = grads()
    assert padded.keys() == packed.keys() and len(padded) > 10
    for name in padded:
        assert torch.allclose(packed[name], padded[name], atol=1e-5), name


def test_pack_handles_either_padding_side():
    features = {
        "input_ids": torch.tensor([[5, 6, 7, 0], [0, 0, 8, 9]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]]),
    }
    packed, index = packing.pack(features, offset=2)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed["position_ids"].tolist() == [[2, 3, 4, 2, 3]]
    assert packed["cu_seq_lens_q"].tolist() == [0, 3, 5]
    assert packed["cu_seq_lens_q"].dtype == torch.int32
    assert packed["max_length_q"] >= 3  # an upper bound of the longest text is all varlen needs
    assert index.tolist() == [0, 1, 2, 6, 7]


def test_position_offset_follows_the_architecture(tiny, tiny_xlmr):
    assert packing.position_offset(tiny[0].auto_model) == 0
    assert packing.position_offset(tiny_xlmr[0].auto_model) == tiny_xlmr[0].auto_model.config.pad_token_id + 1


def test_disable_restores_padded_model_and_saved_model_is_standard(tiny, tmp_path):
    before = embed(tiny.eval(), TEXTS)
    packing.enable(tiny)
    packing.enable(tiny)  # idempotent
    packing.disable(tiny)
    assert not packing.is_enabled(tiny)
    assert tiny[0].auto_model.config._attn_implementation != packing.ATTENTION_NAME
    assert torch.allclose(embed(tiny, TEXTS), before)
    packing.enable(tiny)
    tiny.save(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert packing.ATTENTION_NAME not in json.dumps(saved)


def test_attention_without_boundaries_fails_clearly():
    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="cu_seq_lens"):
        packing.packed_attention(None, q, q, q, None)


def test_wanted_modes():
    assert packing.wanted("off", "cuda") is False
    assert packing.wanted("on", "cpu") is True
    assert packing.wanted("auto", "cpu") is False
    assert packing.wanted("auto", "cuda:0") is packing.varlen_available()
    with pytest.raises(ValueError, match="packed_attention"):
        packing.wanted("sometimes", "cuda")


def test_apply_packs_when_wanted_and_possible_and_says_why_not(tiny):
    assert packing.apply(tiny, "off", "off", "cuda", where="x") is False and not packing.is_enabled(tiny)
    assert packing.apply(tiny, "auto", "off", "cpu", where="x") is False  # auto packs on CUDA only
    assert packing.apply(tiny, "on", "off", "cpu", where="x") is True and packing.is_enabled(tiny)
    not_a_transformer = [object()]
    assert packing.apply(not_a_transformer, "auto", "off", "cuda:0", where="x") is False  # stays padded, no error
    with pytest.raises(ValueError, match="train.packed_attention=on but .* no transformers model"):
        packing.apply(not_a_transformer, "on", "off", "cpu", where="train.packed_attention")
