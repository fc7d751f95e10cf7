"""Scoring models on probe collections, and choosing with the dev probes (the quality benchmark,
bench/bench_quality.py; `make bench-quality`, `make train-best`).

Built on the evaluation stage's own pieces (IRCollection, score_grid, summarize with paired bootstrap
intervals, the shared encoder): each model encodes each distinct text list once (probes that share a
corpus share its embeddings), NDCG@10 and the other metrics come from the product's scorer.

Selection (WiSE-FT mixing weight, early stopping) never looks at the reported probes: only at the
`dev_*` probes of medembed/prep/holdout.py, built from other held-out groups. The rule encodes the
requirement "no worse than the base at any dim on any probe, then as much gain as possible": among
candidates whose worst relative NDCG@10 change over dev probes x dims is >= 0, the best mean wins; when
none qualifies, the best worst wins. (A first objective, mean + min(0, worst), let a candidate buy mean
gain with a regression somewhere; docs/QUALITY.md shows both.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import EvalConfig
from .evaluator import IRCollection, SharedEncoder, score_grid, shared_text_lists, summarize
from .metrics import GATE_METRIC
from .search import FLOAT32

log = logging.getLogger(__name__)

METRIC = GATE_METRIC


def load_collections(paths: dict[str, str]) -> dict[str, IRCollection]:
    return {name: IRCollection(name, Path(path)) for name, path in paths.items()}


class ProbeScorer:
    """Per-query float32 metrics at every dim for any model on a fixed set of collections."""

    def __init__(self, collections: dict[str, IRCollection], dims, batch_size: int = 64,
                 packed_attention: str = "off", compile_layers: str = "off"):
        self.collections = collections
        self.dims = sorted({int(d) for d in dims}, reverse=True)
        self.batch_size = batch_size
        self.speed = dict(packed_attention=packed_attention, compile_layers=compile_layers, graph="off",
                          show_progress_bar=False)
        self.shared = shared_text_lists(collections.values())

    def per_query(self, model) -> dict:
        encoder = SharedEncoder(model, self.batch_size, self.shared, **self.speed)
        device = "cuda" if str(getattr(model, "device", "cpu")).startswith("cuda") else "cpu"
        out = {}
        for name, collection in self.collections.items():
            q, c = encoder.collection(collection)
            out[name], _ = score_grid(q, c, collection.judgements, self.dims, (FLOAT32,), 1024, 4, device)
        return out


def compare(base_pq: dict, model_pq: dict, collections: dict, dims, config: EvalConfig | None = None) -> dict:
    """{probe: evaluator.summarize output (base vs fine-tuned, float32)} for every probe."""
    config = replace(config or EvalConfig(), precisions=(FLOAT32,))
    out = {}
    for name, collection in collections.items():
        per_query = {"base": base_pq[name], "finetuned": model_pq[name]}
        latency = {label: {str(d): {FLOAT32: 0.0} for d in dims} for label in per_query}
        summary = summarize(per_query, latency, dims, (FLOAT32,), len(collection.corpus), config)
        out[name] = {"n_queries": len(collection.queries), "n_corpus": len(collection.corpus),
                     "fingerprint": collection.fingerprint, **summary}
    return out


def ndcg_table(summaries: dict, dims) -> dict:
    """{probe: {dim: base, model, delta, low, high, rel_pct, significant}} from `compare` output (NDCG@10, float32)."""
    table = {}
    for name, summary in summaries.items():
        rows = {}
        for d in dims:
            base = summary["base"][str(d)][METRIC]
            tuned = summary["finetuned"][str(d)][METRIC]
            delta = summary["deltas"][str(d)][FLOAT32][METRIC]
            rows[str(d)] = {"base": round(base, 4), "model": round(tuned, 4), "delta": round(delta["delta"], 4),
                            "low": round(delta["low"], 4), "high": round(delta["high"], 4),
                            "rel_pct": round(100 * (tuned - base) / base, 2) if base else 0.0,
                            "significant": delta["excludes_zero"]}
        table[name] = rows
    return table


def relative_changes(base_pq: dict, model_pq: dict, names, dims) -> dict[tuple[str, str], float]:
    out = {}
    for name in names:
        for d in dims:
            b = float(np.mean(base_pq[name][str(d)][FLOAT32][METRIC]))
            m = float(np.mean(model_pq[name][str(d)][FLOAT32][METRIC]))
            out[(name, str(d))] = (m - b) / b if b else 0.0
    return out


def selection_score(base_pq: dict, model_pq: dict, names, dims) -> dict:
    """One number that orders candidates: the mean relative NDCG@10 change over names x dims when the
    worst change is >= 0, else -1 + the worst change (below every candidate that regresses nowhere)."""
    rel = relative_changes(base_pq, model_pq, names, dims)
    mean, worst = float(np.mean(list(rel.values()))), float(min(rel.values()))
    return {"score": mean if worst >= 0 else -1.0 + worst, "mean_rel": mean, "worst_rel": worst}


def choose_alpha(model, base_state: dict, scorer: ProbeScorer, base_pq: dict, alphas) -> tuple[float, list[dict]]:
    """Mix `model` (fine-tuned) with the base at each alpha, score the dev probes, keep the best alpha;
    `model` is left holding the chosen mix. Ties go to the larger alpha (closer to the fine-tune)."""
    from ..train.wiseft import mix_into

    tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trials = []
    for alpha in sorted(set(float(a) for a in alphas)):
        model.load_state_dict(tuned)
        if alpha < 1.0:
            mix_into(model, base_state, alpha)
        start = time.perf_counter()
        pq = scorer.per_query(model)
        trials.append({"alpha": alpha, **selection_score(base_pq, pq, scorer.collections, scorer.dims),
                       "seconds": round(time.perf_counter() - start, 1)})
        log.info("WiSE-FT alpha %.2f on dev probes: %s", alpha, trials[-1])
    best = max(trials, key=lambda t: (round(t["score"], 6), t["alpha"]))
    model.load_state_dict(tuned)
    if best["alpha"] < 1.0:
        mix_into(model, base_state, best["alpha"])
    return best["alpha"], trials


def dev_probe_callback(scorer: ProbeScorer, base_pq: dict, every: int):
    """A transformers TrainerCallback that scores the dev probes every `every` steps and at the end of
    training, keeps the best weights in memory and restores them when training ends (early stopping
    on the shifted dev probes, without stopping the learning-rate schedule)."""
    from transformers import TrainerCallback

    class DevProbeCallback(TrainerCallback):
        def __init__(self):
            self.history: list[dict] = []
            self.best: dict | None = None
            self.best_state = None

        def _score(self, model, step: int):
            was_training = model.training
            pq = scorer.per_query(model)
            model.train(was_training)
            entry = {"step": step, **selection_score(base_pq, pq, scorer.collections, scorer.dims)}
            self.history.append(entry)
            log.info("dev probes at step %d: %s", step, entry)
            if self.best is None or entry["score"] > self.best["score"]:
                self.best = entry
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if every and state.global_step % every == 0 and state.global_step < state.max_steps:
                self._score(model, state.global_step)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self._score(model, state.global_step)
            if self.best_state is not None and self.best["step"] != state.global_step:
                model.load_state_dict({k: v.to(next(model.parameters()).device) for k, v in self.best_state.items()})
            log.info("dev-probe selection kept step %d of %d", self.best["step"], state.global_step)

    return DevProbeCallback()
