"""The evaluation report: a self-contained HTML page (plots as base64 PNGs, tables) for the
Kubeflow UI's HTML viewer and the local run folder, and the same tables as a Markdown summary.

It answers "which dimension and precision should we index?": the recommendation first, then every
collection side by side (the main set and the guard collections: built-in shifted probes and extra
collections, NDCG@10 base -> fine-tuned with the paired interval per dim), then the evidence per
collection (quality per dim with bootstrap intervals, quality vs index size, the dim x precision grid).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ..artifacts import REPORT_HTML_FILE, REPORT_MARKDOWN_FILE
from ..config import EvalConfig
from .metrics import GATE_METRIC
from .search import FLOAT32
from .tables import MODELS

PRECISION_LABELS = {"float32": "float32", "int8": "int8", "binary": "binary (Hamming)",
                    "binary_rescore": "binary + float rescoring"}
SHORT_PRECISION_LABELS = {"binary": "binary", "binary_rescore": "binary+rescore"}
MODEL_LABELS = {"base": "base", "finetuned": "fine-tuned"}
# The report's float32 table; every metric at every k stays in results.json.
REPORT_METRICS = ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10", "precision@1")
PLOT_DPI = 110

Table = tuple[list[str], list[list[str]]]
RECOMMENDED_MARK = " ★"


# ------------------------------------------------------------------------ formatting


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _delta_text(delta: dict | None) -> str:
    if not delta:
        return ""
    mark = " *" if delta["excludes_zero"] else ""
    return f"{delta['delta']:+.4f} [{delta['low']:+.4f}, {delta['high']:+.4f}]{mark}"


def _compact_count(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n:,}"


def _index_passages(results: dict) -> int:
    return int(results.get("settings", {}).get("index_passages", EvalConfig().index_passages))


def recommendation_text(results: dict) -> str:
    rec = results.get("recommendation")
    if not rec:
        return "No recommendation (no precision grid in these results)."
    tolerance = rec["tolerance"] * 100
    return (f"Index the {MODEL_LABELS.get(rec['model'], rec['model'])} model at dim {rec['dim']}, {PRECISION_LABELS.get(rec['precision'], rec['precision'])}: "
            f"{rec['bytes_per_vector']} bytes per vector ({rec['compression']:.0f}x smaller than {rec['reference']}), "
            f"{human_bytes(rec['index_bytes_at_scale'])} for {_index_passages(results):,} passages. "
            f"{rec['metric']} {rec['score']:.4f} vs {rec['reference_score']:.4f} at {rec['reference']} "
            f"({rec['relative_change'] * 100:+.2f}%, tolerance -{tolerance:g}%): the smallest index within tolerance.")


# --------------------------------------------------------------------------- tables


def _full_grid(results: dict) -> bool:
    return "grid" in results and len(results.get("precisions", [])) > 1


def side_by_side_table(results: dict) -> Table:
    """Every collection in one table: NDCG@10 (float32) base -> fine-tuned and Δ [95% paired interval]
    per dim. ▼ marks an interval entirely below 0 (the gate refuses such a candidate)."""
    dims = results["dims"]
    headers = ["collection", "kind", "queries"] + [f"dim {d}: base → fine-tuned, Δ [95% interval]" for d in dims]
    rows = []
    for name, collection in _collections(results):
        kind = "main (the training data's own template)" if collection is results else collection.get("kind", "extra collection")
        cells = []
        for d in dims:
            base, tuned = collection["base"][str(d)][GATE_METRIC], collection["finetuned"][str(d)][GATE_METRIC]
            delta = collection.get("deltas", {}).get(str(d), {}).get(FLOAT32, {}).get(GATE_METRIC)
            text = f"{base:.4f} → {tuned:.4f}, " + (_delta_text(delta) or f"{tuned - base:+.4f}")
            if delta and delta["high"] < 0:
                text += " ▼"
            cells.append(text)
        rows.append([name, kind, str(collection["n_queries"])] + cells)
    return headers, rows


def float32_table(results: dict, metrics=REPORT_METRICS) -> Table:
    """Base vs fine-tuned per metric and dim at float32, with the paired bootstrap interval of the delta."""
    headers = ["metric", "dim", "base", "fine-tuned", "Δ [95% interval]"]
    rows = []
    for metric in metrics:
        for dim in results["dims"]:
            base, tuned = results["base"][str(dim)][metric], results["finetuned"][str(dim)][metric]
            delta = results.get("deltas", {}).get(str(dim), {}).get(FLOAT32, {}).get(metric)
            rows.append([metric, str(dim), f"{base:.4f}", f"{tuned:.4f}", _delta_text(delta) or f"{tuned - base:+.4f}"])
    return headers, rows


def grid_table(results: dict) -> Table:
    """Every (dim, precision): fine-tuned NDCG@10 and its delta over base, size and latency."""
    scale = _index_passages(results)
    headers = ["dim", "precision", f"{GATE_METRIC} fine-tuned", "base", "Δ [95% interval]",
               "bytes/vector", "index, this corpus", f"index, {_compact_count(scale)} passages", "ms/query"]
    rec = results.get("recommendation", {})
    rows = []
    for dim in results["dims"]:
        for precision in results["precisions"]:
            tuned = results["grid"]["finetuned"][str(dim)][precision]
            base = results["grid"]["base"][str(dim)][precision]
            size = results["index"][str(dim)][precision]
            chosen = rec.get("dim") == dim and rec.get("precision") == precision
            rows.append([
                f"{dim}{RECOMMENDED_MARK if chosen else ''}", PRECISION_LABELS.get(precision, precision),
                f"{tuned[GATE_METRIC]:.4f}", f"{base[GATE_METRIC]:.4f}",
                _delta_text(results.get("deltas", {}).get(str(dim), {}).get(precision, {}).get(GATE_METRIC)),
                str(size["bytes_per_vector"]), human_bytes(size["index_bytes"]), human_bytes(size["index_bytes_at_scale"]),
                f"{tuned['latency_ms_per_query']:.3f}",
            ])
    return headers, rows


def language_table(results: dict) -> Table | None:
    slices = results.get("languages")
    if not slices:
        return None
    headers = ["language", "queries", "dim", f"{GATE_METRIC} base", f"{GATE_METRIC} fine-tuned", "Δ [95% interval]"]
    rows = []
    for language, entry in slices.items():
        for dim in results["dims"]:
            rows.append([language, str(entry["n_queries"]), str(dim), f"{entry['base'][str(dim)][GATE_METRIC]:.4f}",
                         f"{entry['finetuned'][str(dim)][GATE_METRIC]:.4f}",
                         _delta_text(entry.get("deltas", {}).get(str(dim), {}).get(GATE_METRIC))])
    return headers, rows


def _markdown_table(table: Table) -> str:
    headers, rows = table
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    headers, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr" + (' class="chosen"' if row[0].endswith(RECOMMENDED_MARK) else "") + ">"
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _sections(results: dict) -> list[tuple[str, str, Table]]:
    """(title, explanation, table) of one collection, shared by both renderers: the grid that
    answers the indexing question first, then the base-vs-fine-tuned evidence."""
    n = f"{results['n_queries']} queries, {results['n_corpus']} passages"
    sections = []
    if _full_grid(results):
        sections.append(("Dimension × precision",
                         f"{n}. int8 ranges are calibrated on the corpus embeddings; binary search ranks by Hamming "
                         "distance; rescoring re-ranks the binary top candidates with the float query (no extra storage). "
                         "Δ = fine-tuned − base [95% paired bootstrap interval over queries]; * = the interval excludes 0. "
                         "★ = recommended. Latency: exact brute-force search on the evaluation device, for comparing cells, not an ANN index.",
                         grid_table(results)))
    sections.append(("Base vs fine-tuned at float32",
                     f"{n}. Δ = fine-tuned − base [95% paired bootstrap interval over queries]; * = the interval excludes 0.",
                     float32_table(results)))
    languages = language_table(results)
    if languages:
        sections.append(("Per-language slices (float32)", "Queries grouped by their `language` field.", languages))
    return sections


# ---------------------------------------------------------------------------- plots


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_quality_vs_dim(results: dict) -> str:
    """NDCG@10 against dim for both models (float32) with bootstrap intervals of each mean."""
    import matplotlib.pyplot as plt

    dims = results["dims"]
    figure, axis = plt.subplots(figsize=(6.4, 4))
    for label, colour in zip(MODELS, ("tab:grey", "tab:blue")):
        scores = [results[label][str(d)][GATE_METRIC] for d in dims]
        interval = results.get("intervals", {}).get(label)
        errors = None
        if interval:
            errors = [[max(s - interval[str(d)][0], 0) for s, d in zip(scores, dims)],
                      [max(interval[str(d)][1] - s, 0) for s, d in zip(scores, dims)]]
        axis.errorbar(dims, scores, yerr=errors, marker="o", capsize=4, color=colour, label=MODEL_LABELS[label])
    axis.set_xscale("log", base=2)
    axis.set_xticks(dims, [str(d) for d in dims])
    axis.minorticks_off()
    axis.set_xlabel("Matryoshka dimension")
    axis.set_ylabel(f"{GATE_METRIC} (float32)")
    axis.set_title(f"{GATE_METRIC} vs dimension (95% bootstrap intervals)")
    axis.grid(alpha=0.3)
    axis.legend()
    return _png(figure)


def plot_quality_vs_size(results: dict) -> str:
    """Fine-tuned NDCG@10 against index size at scale, one line per precision."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4))
    for precision, marker in zip(results["precisions"], ("o", "s", "^", "v", "D")):
        sizes = [results["index"][str(d)][precision]["index_bytes_at_scale"] / 2**30 for d in results["dims"]]
        scores = [results["grid"]["finetuned"][str(d)][precision][GATE_METRIC] for d in results["dims"]]
        axis.plot(sizes, scores, marker=marker, label=PRECISION_LABELS.get(precision, precision))
        for size, score, dim in zip(sizes, scores, results["dims"]):
            axis.annotate(str(dim), (size, score), textcoords="offset points", xytext=(3, 3), fontsize=7)
    rec = results.get("recommendation")
    if rec:
        axis.axhline(rec["reference_score"] * (1 - rec["tolerance"]), color="tab:red", linestyle="--", linewidth=1,
                     label=f"tolerance (-{rec['tolerance'] * 100:g}%)")
        axis.plot([rec["index_bytes_at_scale"] / 2**30], [rec["score"]], marker="*", markersize=16, color="tab:red",
                  linestyle="none", label="recommended")
    axis.set_xscale("log")
    axis.set_xlabel(f"index size for {_index_passages(results):,} passages (GiB, log)")
    axis.set_ylabel(f"{GATE_METRIC} (fine-tuned)")
    axis.set_title("Quality vs index size (labels: dim)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _png(figure)


def plot_heatmap(results: dict) -> str:
    """dim x precision heat map of fine-tuned NDCG@10."""
    import matplotlib.pyplot as plt
    import numpy as np

    dims, precisions = results["dims"], results["precisions"]
    values = np.array([[results["grid"]["finetuned"][str(d)][p][GATE_METRIC] for p in precisions] for d in dims])
    figure, axis = plt.subplots(figsize=(6.4, 0.5 * len(dims) + 1.6))
    image = axis.imshow(values, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(precisions)), [SHORT_PRECISION_LABELS.get(p, p) for p in precisions])
    axis.set_yticks(range(len(dims)), [str(d) for d in dims])
    axis.set_ylabel("dim")
    middle = (values.max() + values.min()) / 2
    for i in range(len(dims)):
        for j in range(len(precisions)):
            axis.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", fontsize=8,
                      color="black" if values[i, j] > middle else "white")
    figure.colorbar(image, ax=axis, label=f"{GATE_METRIC} (fine-tuned)")
    axis.set_title(f"{GATE_METRIC}: dimension × precision")
    return _png(figure)


def plots(results: dict) -> list[tuple[str, str]]:
    """(caption, base64 PNG) for one collection."""
    import matplotlib

    matplotlib.use("Agg")  # headless: KFP pods and CI have no display
    out = [("NDCG@10 vs dimension, base and fine-tuned, with 95% bootstrap intervals", plot_quality_vs_dim(results))]
    if _full_grid(results):
        out.append(("Quality vs index size across precisions", plot_quality_vs_size(results)))
        out.append(("Dimension × precision heat map", plot_heatmap(results)))
    return out


# -------------------------------------------------------------------------- renderers


def _collections(results: dict) -> list[tuple[str, dict]]:
    return [("main evaluation set", results)] + list(results.get("collections", {}).items())


SIDE_BY_SIDE_NOTE = ("NDCG@10 at float32, base → fine-tuned, Δ = fine-tuned − base [95% paired bootstrap interval over "
                     "queries]; * = the interval excludes 0; ▼ = entirely below 0. Every collection but the main set is a "
                     "guard: the gate refuses a candidate significantly worse than the base on any of them. Built-in "
                     "probes (data.shift_probes) are built by prep from the same held-out test split, queried in ways "
                     "the training template never uses (query styles) or testing what the base already does well "
                     "(forgetting).")


def _describe(name: str, collection: dict, results: dict) -> str:
    if collection is results:
        return ""
    return f"{collection.get('kind', 'extra collection')}" + (f": {collection['description']}" if collection.get("description") else "")


def render_markdown(results: dict) -> str:
    lines = ["# Matryoshka evaluation", "", f"**Recommendation:** {recommendation_text(results)}", ""]
    if results.get("collections"):
        lines += ["## Every collection side by side", "", SIDE_BY_SIDE_NOTE, "", _markdown_table(side_by_side_table(results)), ""]
    for name, collection in _collections(results):
        lines += [f"## Collection: {name}", ""]
        if collection is not results:
            lines += [_describe(name, collection, results) + ".", ""]
            if _full_grid(collection):
                lines += [f"Recommendation here: {recommendation_text(collection)}", ""]
        for title, explanation, table in _sections(collection):
            lines += [f"### {title}", "", explanation, "", _markdown_table(table), ""]
    lines += [_method_note(results)]
    return "\n".join(lines) + "\n"


def _method_note(results: dict) -> str:
    settings = results.get("settings", {})
    return (f"Base model `{results.get('base_model', '?')}`. Metrics at k = 1, 3, 5, 10, 100 (NDCG with graded gains, "
            "MRR, MAP normalised by min(k, #relevant) as sentence-transformers, Recall, Precision, F1, accuracy) "
            "are in results.json. Bootstrap: "
            f"{settings.get('bootstrap_samples', '?')} paired resamples of the queries, seed {settings.get('bootstrap_seed', '?')}. "
            f"Evaluation set fingerprint `{results.get('eval_fingerprint', '')[:16]}`.")


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d2330;max-width:1280px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccd;padding-bottom:4px;margin-top:28px}h3{font-size:15px}
.rec{background:#eef6ee;border-left:4px solid #2a8a3a;padding:10px 14px;font-size:15px}
table{border-collapse:collapse;font-size:12px;margin:8px 0 16px}
th,td{border:1px solid #d5d9e0;padding:3px 7px;text-align:right;white-space:nowrap}th{background:#f2f4f8}
td:first-child,th:first-child{text-align:left}tr.chosen td{background:#fff4c2;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;flex:1 1 360px;max-width:600px}figcaption{font-size:12px;color:#555}
.scroll{overflow-x:auto}img{max-width:100%;height:auto;border:1px solid #e3e6eb}p.note{font-size:12px;color:#555}
"""


def render_html(results: dict) -> str:
    parts = [f"<h1>Matryoshka evaluation: which dimension and precision to index</h1>",
             f'<p class="rec"><b>Recommendation.</b> {html.escape(recommendation_text(results))}</p>']
    if results.get("collections"):
        parts += ["<h2>Every collection side by side</h2>", f'<p class="note">{html.escape(SIDE_BY_SIDE_NOTE)}</p>',
                  _html_table(side_by_side_table(results))]
    for name, collection in _collections(results):
        parts.append(f"<h2>Collection: {html.escape(name)}</h2>")
        if collection is not results:
            parts.append(f"<p>{html.escape(_describe(name, collection, results))}</p>")
            if _full_grid(collection):
                parts.append(f"<p>{html.escape(recommendation_text(collection))}</p>")
        parts.append('<div class="plots">' + "".join(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            for caption, png in plots(collection)) + "</div>")
        for title, explanation, table in _sections(collection):
            parts += [f"<h3>{html.escape(title)}</h3>", f"<p class=\"note\">{html.escape(explanation)}</p>", _html_table(table)]
    parts.append(f'<p class="note">{html.escape(_method_note(results))}</p>')
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>Matryoshka evaluation</title>"
            f"<style>{STYLE}</style></head><body>" + "".join(parts) + "</body></html>\n")


def write_reports(results: dict, folder: Path) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    html_path, markdown_path = folder / REPORT_HTML_FILE, folder / REPORT_MARKDOWN_FILE
    html_path.write_text(render_html(results), encoding="utf-8")
    markdown_path.write_text(render_markdown(results), encoding="utf-8")
    return html_path, markdown_path
