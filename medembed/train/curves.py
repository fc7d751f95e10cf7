"""Evaluation during training and the training curves artifact.

`RetrievalEvaluator` encodes the dev queries and passages once at full dim and scores every requested
Matryoshka dim by truncating and re-normalising (docs/STACK-NOTES.md §2: one evaluator per dim re-encodes for
each and costs 4x for identical numbers). `write` turns the trainer's log history into
training_curves.json, a PNG and an HTML page that the Kubeflow UI shows.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)

CURVES_JSON = "training_curves.json"
CURVES_PNG = "training_curves.png"
CURVES_HTML = "training_curves.html"
TOP_K = 10


def _evaluator_base():
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

    return BaseEvaluator


class RetrievalEvaluator(_evaluator_base()):
    """NDCG@10 and MRR@10 of each dev query against all dev passages, per Matryoshka dim, plus their
    mean over dims (`mean_ndcg@10`, the default metric that picks the best checkpoint)."""

    def __init__(self, dev_rows: list[dict], dims: list[int], batch_size: int = 64, name: str = "dev",
                 packed_attention: str = "auto"):
        super().__init__()
        self.name = name
        # The training stage decides packing for the model it trains; the evaluator must not override it.
        self.packed_attention = packed_attention
        self.dims = sorted({int(d) for d in dims}, reverse=True)
        self.batch_size = batch_size
        passages: dict[str, int] = {}
        relevant: dict[str, set[int]] = {}
        for row in dev_rows:
            doc = passages.setdefault(row["positive"], len(passages))
            relevant.setdefault(row["anchor"], set()).add(doc)
        self.queries = list(relevant)
        self.relevant = [relevant[q] for q in self.queries]
        self.passages = list(passages)
        self.primary_metric = "mean_ndcg@10"
        self.greater_is_better = True

    def __call__(self, model, output_path=None, epoch: float = -1, steps: int = -1) -> dict[str, float]:
        import torch

        from ..encoding import encode

        # Dev sets are small: tokenising in this process beats forking workers mid-training.
        # graph="off": a dev set is small, and a second compiled encoder (and its CUDA graphs) mid-training
        # would cost more compile time and memory than it saves.
        options = dict(show_progress_bar=False, packed_attention=self.packed_attention, workers=0, graph="off")
        queries = encode(model, self.queries, "query", self.batch_size, **options).float()
        docs = encode(model, self.passages, "document", self.batch_size, **options).float()
        metrics: dict[str, float] = {}
        k = min(TOP_K, len(self.passages))
        discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))
        for dim in self.dims:
            q = torch.nn.functional.normalize(queries[:, :dim], dim=-1)
            d = torch.nn.functional.normalize(docs[:, :dim], dim=-1)
            top = (q @ d.T).topk(k, dim=1).indices.cpu()
            hits = torch.tensor([[int(i) in rel for i in row] for row, rel in zip(top.tolist(), self.relevant)], dtype=torch.float32)
            ideal = torch.tensor([discounts[: min(len(rel), k)].sum() for rel in self.relevant])
            ndcg = (hits * discounts).sum(1) / ideal
            first = torch.where(hits.any(1), hits.argmax(1).float() + 1, torch.full((len(hits),), math.inf))
            metrics[f"dim{dim}_ndcg@10"] = float(ndcg.mean())
            metrics[f"dim{dim}_mrr@10"] = float((1.0 / first).mean())
        metrics["mean_ndcg@10"] = sum(metrics[f"dim{d}_ndcg@10"] for d in self.dims) / len(self.dims)
        return self.prefix_name_to_metrics(metrics, self.name)


def curves_from_history(history: list[dict], best_metric: str = "mean_ndcg@10") -> dict:
    """{"loss": [[step, loss]...], "eval": {metric: [[step, value]...]}, "best": {...}}"""
    loss = [[h["step"], h["loss"]] for h in history if "loss" in h and "step" in h]
    evals: dict[str, list] = {}
    for h in history:
        for key, value in h.items():
            if key.startswith("eval_") and key.endswith("ndcg@10") and isinstance(value, (int, float)):
                evals.setdefault(key.split("_", 2)[-1], []).append([h["step"], value])
    best = None
    if best_metric in evals and evals[best_metric]:
        step, value = max(evals[best_metric], key=lambda sv: sv[1])
        best = {"metric": best_metric, "step": step, "value": value}
    return {"loss": loss, "eval": evals, "best": best}


def write(history: list[dict], out_dir: Path, best_metric: str = "mean_ndcg@10") -> dict:
    """training_curves.json always; PNG and HTML (PNG inlined) when matplotlib is installed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = curves_from_history(history, best_metric)
    (out_dir / CURVES_JSON).write_text(json.dumps(data, indent=2))
    png = _plot(data, out_dir / CURVES_PNG)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{points[-1][0]}</td><td>{points[-1][1]:.4f}</td>"
        f"<td>{max(v for _, v in points):.4f}</td></tr>"
        for name, points in sorted(data["eval"].items())
    )
    image = f'<img alt="training curves" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">' if png else ""
    best = html.escape(json.dumps(data["best"])) if data["best"] else "no evaluation during training"
    (out_dir / CURVES_HTML).write_text(
        "<html><body><h2>Training curves</h2>" + image + f"<p>Best checkpoint: {best}</p>"
        "<table border=1><tr><th>metric</th><th>last step</th><th>last</th><th>best</th></tr>" + rows + "</table></body></html>"
    )
    return data


def _plot(data: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: training curves written as JSON/HTML only")
        return None
    panels = 2 if data["eval"] else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    if data["loss"]:
        steps, values = zip(*data["loss"])
        axes[0][0].plot(steps, values)
    axes[0][0].set(title="training loss", xlabel="step", ylabel="loss")
    if data["eval"]:
        for name, points in sorted(data["eval"].items()):
            steps, values = zip(*points)
            axes[0][1].plot(steps, values, marker="o", label=name)
        axes[0][1].set(title="dev NDCG@10 per dim", xlabel="step")
        axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
