"""Results as tables: the per-dim comparison for terminals and Markdown, and the scalar metric names
that line up in the Kubeflow UI's run-compare view."""

from __future__ import annotations

import math
import re

from .metrics import GATE_METRIC, HEADLINE_METRICS
from .search import FLOAT32, PRECISION_BITS

MODELS = ("base", "finetuned")


def comparison_markdown(results: dict, metrics: tuple[str, ...] = HEADLINE_METRICS) -> str:
    """Per-dim table: base -> fine-tuned (delta, with its bootstrap interval when known)."""
    metrics = tuple(m for m in metrics if m in results["base"][str(results["dims"][0])])
    header = "| dim | " + " | ".join(metrics) + " |"
    lines = [
        f"Base model `{results.get('base_model', '?')}`, {results.get('n_queries', '?')} queries, "
        f"{results.get('n_corpus', '?')} passages, float32. Cells: base → fine-tuned (Δ [95% interval]; "
        "* = interval excludes 0).",
        "",
        header,
        "|" + " --- |" * (len(metrics) + 1),
    ]
    for dim in results["dims"]:
        base, tuned = results["base"][str(dim)], results["finetuned"][str(dim)]
        deltas = results.get("deltas", {}).get(str(dim), {}).get(FLOAT32, {})
        cells = []
        for m in metrics:
            cell = f"{base[m]:.4f} → {tuned[m]:.4f} ({tuned[m] - base[m]:+.4f}"
            if m in deltas:
                d = deltas[m]
                cell += f" [{d['low']:+.4f}, {d['high']:+.4f}]{'*' if d['excludes_zero'] else ''}"
            cells.append(cell + ")")
        lines.append(f"| {dim} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_text(results: dict, metrics: tuple[str, ...] = ("ndcg@10", "mrr@10", "map@100", "recall@10")) -> str:
    """Compact fixed-width table for terminals."""
    head = f"{'dim':>5} " + " ".join(f"{m + ' base':>14} {m + ' ft':>12} {'Δ':>7}" for m in metrics)
    rows = [head]
    for dim in results["dims"]:
        base, tuned = results["base"][str(dim)], results["finetuned"][str(dim)]
        rows.append(f"{dim:>5} " + " ".join(f"{base[m]:>14.4f} {tuned[m]:>12.4f} {tuned[m] - base[m]:>+7.4f}" for m in metrics))
    rec = results.get("recommendation")
    if rec:
        rows.append(f"recommended index: dim {rec['dim']} {rec['precision']} ({rec['bytes_per_vector']} B/vector, "
                    f"{rec['metric']} {rec['score']:.4f} vs {rec['reference_score']:.4f} at {rec['reference']})")
    return "\n".join(rows)


def guard_text(results: dict) -> str:
    """Guard collections (built-in shifted probes, extra collections) for terminals: NDCG@10 base ->
    fine-tuned and Δ [95% interval] per dim; "(worse)" marks an interval entirely below 0."""
    collections = results.get("collections") or {}
    if not collections:
        return ""
    rows = []
    for name, collection in collections.items():
        cells = []
        for dim in results["dims"]:
            base, tuned = collection["base"][str(dim)][GATE_METRIC], collection["finetuned"][str(dim)][GATE_METRIC]
            d = collection["deltas"][str(dim)][FLOAT32][GATE_METRIC]
            cells.append(f"{dim}: {base:.4f}->{tuned:.4f} {d['delta']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
                         + (" (worse)" if d["high"] < 0 else ""))
        rows.append(f"  {name} ({collection['n_queries']} queries)\n    " + "\n    ".join(cells))
    return "\n".join(rows)


def kfp_metric_name(metric: str, dim: int | str, precision: str = FLOAT32, model: str = "finetuned") -> str:
    """Names that line up in KFP's run-compare view: metric first, then dim, then precision, e.g.
    `ndcg_at_10.dim_256.int8` for the fine-tuned model and `ndcg_at_10.dim_256.int8.base` for the base."""
    name = f"{metric.replace('@', '_at_')}.dim_{dim}.{precision}"
    return name if model == "finetuned" else f"{name}.{model}"


def kfp_metrics(results: dict) -> dict[str, float]:
    """The scalars shown in the Kubeflow UI: NDCG@10 in every cell for both models, the headline
    metrics at float32, the float32 NDCG@10 delta with its interval, and the recommendation."""
    out: dict[str, float] = {}
    for label in MODELS:
        for dim in results["dims"]:
            for precision in results.get("precisions", [FLOAT32]):
                cell = results.get("grid", {}).get(label, {}).get(str(dim), {}).get(precision) or results[label][str(dim)]
                out[kfp_metric_name(GATE_METRIC, dim, precision, label)] = cell[GATE_METRIC]
            for metric in HEADLINE_METRICS:
                out[kfp_metric_name(metric, dim, FLOAT32, label)] = results[label][str(dim)][metric]
    for dim in results["dims"]:
        delta = results.get("deltas", {}).get(str(dim), {}).get(FLOAT32, {}).get(GATE_METRIC)
        if delta:
            for key, suffix in (("delta", "delta"), ("low", "delta_low"), ("high", "delta_high")):
                out[kfp_metric_name(GATE_METRIC, dim, FLOAT32, suffix)] = delta[key]
    for name, collection in (results.get("collections") or {}).items():
        # e.g. guard.probe_keyword.ndcg_at_10.dim_256.delta_low: each guard collection's float32 NDCG@10 delta.
        prefix = "guard." + re.sub(r"[^A-Za-z0-9_-]+", "_", name)
        for dim in results["dims"]:
            delta = collection.get("deltas", {}).get(str(dim), {}).get(FLOAT32, {}).get(GATE_METRIC)
            if delta:
                for key, suffix in (("delta", "delta"), ("low", "delta_low"), ("high", "delta_high")):
                    out[f"{prefix}.{GATE_METRIC.replace('@', '_at_')}.dim_{dim}.{suffix}"] = delta[key]
    rec = results.get("recommendation")
    if rec:
        out["recommended.dim"] = rec["dim"]
        out["recommended.bits_per_coordinate"] = PRECISION_BITS[rec["precision"]]
        out["recommended.bytes_per_vector"] = rec["bytes_per_vector"]
        out[f"recommended.{GATE_METRIC.replace('@', '_at_')}"] = rec["score"]
    return out


def isfinite_results(results: dict) -> bool:
    return all(math.isfinite(v) for label in MODELS for d in results[label].values() for v in d.values())
