"""Packed (padding-free, varlen attention, compiled layers) vs padded forward+backward on the GPU.

The CPU tests (tests/test_packing.py) check the packed path against the padded one exactly in fp32 with
a per-text reference attention; torch's varlen flash kernel only runs on CUDA in bf16, so this script
checks that kernel path: e5-large shape (random init), bf16 autocast, a batch of realistic lengths.
Reports the cosine similarity of embeddings and of the parameter gradient, packed vs padded, with the
padded bf16 path's own agreement with fp32 as the yardstick. Prints one JSON object; `--out` writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import ROOT, benchmark_model, synthetic_pairs  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run(model, texts, autocast: bool):
    import torch

    model.zero_grad()
    features = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in model.preprocess(texts, prompt="passage: ").items()}
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        emb = model(features)["sentence_embedding"].float()
        # An MNRL-like objective, so every embedding and every weight gets gradient.
        loss = torch.nn.functional.cross_entropy(emb @ emb.roll(1, 0).T * 20, torch.arange(len(emb), device=emb.device))
    loss.backward()
    grad = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return emb.detach(), grad


def cosine(a, b):
    import torch

    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default=None)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from medembed import packing
    from medembed.models import configure_torch

    cuda = torch.cuda.is_available()
    shape, tokenizer, model_dir = benchmark_model(args.shape, args.model_dir)
    device = configure_torch()
    model = SentenceTransformer(str(model_dir), device=device).eval()  # eval: no dropout, same function
    texts = [r["positive"] for r in synthetic_pairs(tokenizer, args.texts, seed=3)]

    ref_emb, ref_grad = run(model, texts, autocast=False)  # fp32 padded: the reference
    padded_emb, padded_grad = run(model, texts, autocast=cuda)
    report = {"shape": shape, "texts": len(texts), "device": device,
              "padded_bf16_vs_fp32": {"embedding_cos_min": None, "grad_cos": cosine(padded_grad, ref_grad)}}
    report["padded_bf16_vs_fp32"]["embedding_cos_min"] = float(torch.nn.functional.cosine_similarity(padded_emb, ref_emb).min())
    for compiled in (False, True):
        packing.enable(model, compile_layers=compiled and cuda)
        start = time.perf_counter()
        emb, grad = run(model, texts, autocast=cuda)
        name = "packed_compiled" if compiled and cuda else "packed"
        report[f"{name}_vs_padded_bf16"] = {
            "embedding_cos_min": float(torch.nn.functional.cosine_similarity(emb, padded_emb).min()),
            "grad_cos": cosine(grad, padded_grad),
            "first_call_s": round(time.perf_counter() - start, 1),
        }
        report[f"{name}_vs_fp32"] = {
            "embedding_cos_min": float(torch.nn.functional.cosine_similarity(emb, ref_emb).min()),
            "grad_cos": cosine(grad, ref_grad),
        }
        print(name, json.dumps(report[f"{name}_vs_padded_bf16"]), flush=True)
        if not cuda:
            break
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
