"""The data card: what prep did, as Markdown (KFP Markdown artifact) and HTML with length
histograms embedded as PNG (KFP HTML artifact; the UI shows both without any server)."""

from __future__ import annotations

import base64
import html
import io


def _rows(stats: dict) -> list[tuple[str, object]]:
    v = stats.get("validation", {})
    return [
        ("rows read", stats["rows_read"]),
        ("dropped: bad rows (validation)", v.get("bad_rows", 0)),
        ("dropped: empty question or passage", stats["dropped_empty"]),
        ("dropped: exact duplicate pair", stats["dropped_duplicate"]),
        ("dropped: near-duplicate pair", stats["dropped_near_duplicate"]),
        ("pairs kept", stats["rows_kept"]),
        ("answer headings repeating the question, removed", stats["headings_removed"]),
        ("rows with HTML remnants, cleaned", v.get("warnings_by_reason", {}).get("html remnants removed", 0)),
        ("input files skipped (unknown type; named in validation_report.json)", len(v.get("skipped_files", []))),
        ("queries with several different answers (grouped)", stats["queries_with_several_answers"]),
        ("near-duplicate query clusters (>1 distinct text)", stats["near_duplicate_query_clusters"]),
        ("near-duplicate passage clusters (>1 distinct text)", stats["near_duplicate_passage_clusters"]),
        ("connected groups", stats["groups"]),
        ("largest group (pairs)", stats["largest_group"]),
        ("train pairs (after cap)", stats["train_pairs"]),
        ("dev pairs", stats["dev_pairs"]),
        ("hard negatives per pair", stats["num_negatives"]),
        ("eval queries / corpus (distractors) / qrels",
         f"{stats['eval_queries']} / {stats['eval_corpus']} ({stats['eval_distractors']}) / {stats['eval_qrels']}"),
        ("groups crossing splits", stats["groups_crossing_splits"]),
        ("near-duplicate queries crossing splits", stats["near_duplicate_queries_crossing_splits"]),
    ]


def markdown(stats: dict) -> str:
    lines = [
        "# Data card",
        "",
        f"Source: `{stats['source']}`  ",
        f"Fingerprint: `{stats['fingerprint']}`",
        "",
        "## Counts at each step",
        "",
        "| step | count |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {value} |" for name, value in _rows(stats)]
    lines += ["", "## Splits", "", "| split | rows | groups |", "| --- | ---: | ---: |"]
    lines += [f"| {s} | {stats['split_rows'].get(s, 0)} | {stats['split_groups'].get(s, 0)} |" for s in ("train", "dev", "test")]
    tokens = stats["token_lengths"]
    lines += [
        "",
        "## Length against the model",
        "",
        f"Tokenizer: `{tokens['tokenizer']}`, max_seq_length {tokens['max_seq_length']}.",
        "",
        "| distinct texts | measured | median tokens | p95 tokens | longer than max_seq_length (truncated) | truncated % |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in ("queries", "passages"):
        t = tokens[kind]
        lines.append(f"| {kind}: {t.get('distinct', t['count'])} | {t['count']} | {t['median']} | {t['p95']} | {t['truncated']} | {t['truncated_pct']:.1f} |")
    lines += ["", "## Languages", "", "| language | pairs |", "| --- | ---: |"]
    lines += [f"| {lang} | {count} |" for lang, count in sorted(stats["languages"].items(), key=lambda kv: -kv[1])]
    lines += ["", "## Personal data", "", f"Action: `{stats['pii_action']}` (counts only, never values).", ""]
    if stats["pii_found"]:
        lines += ["| kind | occurrences |", "| --- | ---: |"] + [f"| {k} | {n} |" for k, n in sorted(stats["pii_found"].items())]
    else:
        lines.append("None found.")
    validation = stats.get("validation", {})
    if validation.get("issues_by_reason"):
        lines += ["", "## Validation: dropped rows by reason", "", "| reason | rows |", "| --- | ---: |"]
        lines += [f"| {r} | {n} |" for r, n in validation["issues_by_reason"].items()]
    if stats.get("mining"):
        m = stats["mining"]
        lines += ["", "## Hard negatives", "",
                  f"Mined with `{stats['mining_model']}` over {m['candidates']} training passages for {m['queries']} pairs: "
                  f"{m['negatives_mined']} mined, {m['random_fill']} random fill; among the naive top-{stats['num_negatives']} "
                  f"candidates {m['skipped_possible_positive']} were possible positives (same topic and question "
                  f"type, or a near-duplicate question or answer) and "
                  f"{m['skipped_margin_or_ceiling']} scored too close to the positive: all skipped."]
    if stats.get("shift_probes"):
        lines += ["", "## Built-in shifted probes (eval_data/probes/, guard collections)", "",
                  "Built from the test split: the same held-out passages, queried in ways the training template never uses.", "",
                  "| probe | kind | queries | passages | what |", "| --- | --- | ---: | ---: | --- |"]
        lines += [f"| {name} | {p['kind']} | {p['queries']} | {p['corpus']}"
                  f"{' (the evaluation corpus)' if p['shares_main_corpus'] else ''} | {p['description']} |"
                  for name, p in stats["shift_probes"].items()]
    return "\n".join(lines) + "\n"


def length_histograms_png(query_tokens: list[int], passage_tokens: list[int], max_seq_length: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for axis, values, title in ((axes[0], query_tokens, "queries"), (axes[1], passage_tokens, "passages")):
        axis.hist(values, bins=40, color="#4472c4")
        axis.axvline(max_seq_length, color="#c00000", linestyle="--", label=f"max_seq_length {max_seq_length}")
        axis.set_title(f"{title}: tokens per text")
        axis.set_xlabel("tokens (capped just above max_seq_length)")
        axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def html_page(stats: dict, histogram_png: bytes | None) -> str:
    body = _markdown_to_html(markdown(stats))
    image = ""
    if histogram_png:
        encoded = base64.b64encode(histogram_png).decode()
        image = f'<h2>Length histograms</h2><img alt="token length histograms" src="data:image/png;base64,{encoded}"/>'
    style = "body{font-family:sans-serif;max-width:960px;margin:1em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}td:last-child{text-align:right}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>Data card</title><style>{style}</style></head><body>{body}{image}</body></html>"


def _markdown_to_html(text: str) -> str:
    """Just enough Markdown (headings, tables, paragraphs, code) for the card above."""
    out: list[str] = []
    table: list[list[str]] = []

    def flush_table() -> None:
        if table:
            head, *rows = table
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
            out.append("</table>")
            table.clear()

    def inline(s: str) -> str:
        parts = html.escape(s).split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                table.append([inline(c) for c in cells])
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line.lstrip('# '))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush_table()
    return "\n".join(out)
