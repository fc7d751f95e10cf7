"""The evaluation report: self-contained HTML with the plots and tables, the Markdown summary,
and a render in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import need_tool
from medembed import artifacts
from medembed.evaluate import evaluator, metrics, report, search, tables
from medembed.config import EvalConfig

CHROMIUM = Path("/usr/bin/chromium")
DIMS = [384, 256, 128, 64]


def synthetic_results(seed: int = 0, n_queries: int = 120, with_collection: bool = True) -> dict:
    """A results dict as evaluation.evaluate builds it, from synthetic per-query metrics (no model)."""
    rng = np.random.default_rng(seed)
    quality = {"float32": 0.0, "int8": 0.01, "binary": 0.12, "binary_rescore": 0.03}
    per_query, latency = {}, {}
    for label, gain in (("base", 0.0), ("finetuned", 0.08)):
        per_query[label], latency[label] = {}, {}
        for dim in DIMS:
            per_query[label][str(dim)], latency[label][str(dim)] = {}, {}
            for precision, loss in quality.items():
                level = 0.55 + gain - loss - 0.1 * np.log2(384 / dim) / 3
                per_query[label][str(dim)][precision] = {
                    m: np.clip(level + rng.normal(0, 0.2, n_queries), 0, 1) for m in metrics.ALL_METRICS}
                latency[label][str(dim)][precision] = 0.01 * dim / 64
    languages = ["en"] * (n_queries - 30) + ["fr"] * 30
    config = EvalConfig(bootstrap_samples=200)
    results = {"dims": DIMS, "base_model": "bundled:all-MiniLM-L6-v2", "n_queries": n_queries, "n_corpus": 800,
               "eval_fingerprint": "f" * 64,
               **evaluator.summarize(per_query, latency, DIMS, search.PRECISIONS, 800, config, languages),
               "settings": {"bootstrap_samples": 200, "bootstrap_seed": 13, "index_passages": 10_000_000}}
    if with_collection:
        results["collections"] = {"extra-beir": synthetic_results(seed + 1, 60, with_collection=False)}
    return results


@pytest.fixture(scope="module")
def results():
    return synthetic_results()


def test_html_report_is_self_contained_with_plots_and_tables(results, tmp_path):
    html_path, markdown_path = report.write_reports(results, tmp_path)
    page = html_path.read_text()
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # Three plots for the main collection, three for the extra one.
    assert len(images) == 6
    assert all(base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n" for png in images)
    assert not re.search(r'(src|href)="(http|//)', page), "the report must not load anything from outside"
    # Every collection side by side, then three tables per collection.
    assert page.count("<table>") == 7 and "<td>ndcg@10</td>" in page
    for dim in DIMS:
        assert f"<td>{dim}</td>" in page
    assert "binary + float rescoring" in page and "Per-language slices" in page and "extra-beir" in page
    rec = results["recommendation"]
    assert f"dim {rec['dim']}" in page and 'class="chosen"' in page
    assert markdown_path.read_text().startswith("# Matryoshka evaluation")


def test_markdown_summary_has_the_recommendation_and_the_tables(results):
    text = report.render_markdown(results)
    assert "**Recommendation:** Index the fine-tuned model at dim" in text
    grid_rows = [line for line in text.splitlines() if line.startswith("| 384 ")]
    # One grid row per precision, in the main collection and in the extra one.
    assert len(grid_rows) == 2 * len(search.PRECISIONS)
    assert sum(" ★ |" in line for line in text.splitlines() if line.startswith("| ")) == 2
    assert "| ndcg@10 | 384 |" in text
    assert "| fr | 30 |" in text
    delta = results["deltas"]["64"]["binary"]["ndcg@10"]
    assert f"[{delta['low']:+.4f}, {delta['high']:+.4f}]" in text


def test_recommendation_sentence_and_sizes():
    assert report.human_bytes(512) == "512 B"
    assert report.human_bytes(3 * 2**30) == "3.0 GiB"
    text = report.recommendation_text({"recommendation": {
        "model": "finetuned", "dim": 256, "precision": "int8", "metric": "ndcg@10", "score": 0.79,
        "reference_score": 0.8, "reference": "dim 1024 float32", "tolerance": 0.02, "relative_change": -0.0125,
        "bytes_per_vector": 256, "compression": 16.0, "index_bytes": 0, "index_bytes_at_scale": 2_560_000_000}})
    assert "dim 256, int8" in text and "16x smaller" in text and "2.4 GiB" in text and "-1.25%" in text


def test_report_renders_in_headless_chromium(results, tmp_path):
    need_tool(CHROMIUM.exists(), "Debian's chromium at /usr/bin/chromium", "apt-get install -y chromium (.ci/run does)")
    html_path, _ = report.write_reports(results, tmp_path / "report")
    # A probe appended to a copy of the page records whether every plot decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace(
        "</body>",
        "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
        " document.title = 'images:' + imgs.filter(i => i.complete && i.naturalWidth > 0).length + '/' + imgs.length; });"
        "</script></body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]
    dom = subprocess.run([str(CHROMIUM), *flags, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>images:6/6</title>" in dom.stdout, dom.stdout[:500]
    assert "Uncaught" not in dom.stderr and "Failed to load resource" not in dom.stderr, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    run = subprocess.run([str(CHROMIUM), *flags, f"--user-data-dir={tmp_path / 'profile-shot'}",
                          "--window-size=1280,1600", f"--screenshot={shot}", html_path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", run.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    # Not a blank page: plots and tables put many distinct colours on screen.
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50


def test_local_run_leaves_the_report_in_the_run_folder(tmp_path, tiny_model_dir, pairs_file):
    """`make run` path: kfp.local runs the evaluate component, run_local copies its report out."""
    from medembed.local_run import run_local
    from medembed.config import load_config

    config = load_config("local", {
        "data.data_uri": str(pairs_file), "data.max_train_pairs": 0, "data.min_train_pairs": 4,
        "data.dev_fraction": 0.0, "data.test_fraction": 0.25, "train.base_model": str(tiny_model_dir),
        "train.matryoshka_dims": "64,32,16", "train.batch_size": 8, "train.warmup_steps": 0,
        "train.max_seq_length": 32, "registry.registry_uri": str(tmp_path / "registry"),
        "eval.bootstrap_samples": 100,
    })
    outcome = run_local(config, tmp_path / "runs")
    page = Path(outcome["report"])
    assert page.parent == Path(outcome["run_root"]) and page.exists()
    text = page.read_text()
    # Three plots for the main set, one (NDCG@10 per dim) for each built-in probe prep wrote.
    probes = outcome["results"]["collections"]
    assert set(probes) == {"probe:keyword", "probe:lay", "probe:misspell"}  # passages too short for `halves`
    assert text.count("data:image/png;base64,") == 3 + len(probes) and "Dimension × precision" in text
    assert "Every collection side by side" in text
    assert (page.parent / "eval-report.md").read_text().startswith("# Matryoshka evaluation")
    # The KFP HTML and Markdown artifacts hold the same report.
    task_dir = next(Path(outcome["run_root"]).glob("*/evaluate-models"))
    assert (task_dir / "report_html").read_text() == text
    metrics = json.loads((task_dir / "executor_output.json").read_text())
    logged = json.dumps(metrics)
    assert "ndcg_at_10.dim_16.binary_rescore" in logged and "ndcg_at_10.dim_64.float32.base" in logged
    # Registration still reads the flat float32 keys.
    assert outcome["results"]["finetuned"]["16"]["ndcg@10"] >= 0


def test_evaluate_component_through_kfp_local(tmp_path, tiny_model_dir):
    """The KFP adapter alone (imported artifacts): HTML and Markdown artifacts, scalar metrics."""
    import kfp.local
    from kfp import dsl

    from components import for_image
    from conftest import make_rows
    from medembed.artifacts import TrainingInfo
    from medembed.config import load_config
    from test_evaluation import write_ir_set

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    TrainingInfo(model_dir=str(model), base_model=str(tiny_model_dir), matryoshka_dims=[64, 32, 16], query_prompt="",
                 passage_prompt="", train_pairs=0, steps=0, epochs=1, train_loss=0.0, train_seconds=0.0, device="cpu",
                 bf16=False).write(model)
    eval_dir = write_ir_set(tmp_path / "eval", make_rows())
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    config = load_config("local", {"eval.bootstrap_samples": 100, "eval.batch_size": 8, "eval.query_chunk_size": 16})
    evaluate_models = for_image(config.cluster.image).evaluate_models

    @dsl.pipeline
    def evaluate_only():
        eval_data = dsl.importer(artifact_uri=str(eval_dir), artifact_class=dsl.Dataset)
        model_in = dsl.importer(artifact_uri=str(model), artifact_class=dsl.Model)
        evaluate_models(config=config.to_dict(), eval_data=eval_data.output, model=model_in.output)

    evaluate_only()
    task = next((tmp_path / "root").glob("*/evaluate-models"))
    assert (task / "report_html").read_text().count("data:image/png;base64,") == 3
    assert (task / "report").read_text() == (task / "results" / artifacts.REPORT_MARKDOWN_FILE).read_text()
    logged = json.loads((task / "executor_output.json").read_text())["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    results = json.loads((task / "results" / "results.json").read_text())
    assert logged == pytest.approx(tables.kfp_metrics(results))
    assert {"ndcg_at_10.dim_16.binary", "ndcg_at_10.dim_16.binary.base", "recommended.dim"} <= set(logged)
