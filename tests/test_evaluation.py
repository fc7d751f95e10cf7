"""Matryoshka evaluation: metric definitions (by hand, against pytrec_eval and against
sentence-transformers' InformationRetrievalEvaluator), quantised search, bootstrap, recommendation,
extra collections and language slices, KFP metric names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medembed import artifacts
from medembed.evaluate import evaluator, metrics, search, tables
from medembed.config import EvalConfig

from conftest import make_rows, write_jsonl


def metric_values(ranked, qrels):
    return {name: values.tolist() for name, values in metrics.per_query_metrics(ranked, qrels).items()}


# ------------------------------------------------------------------ hand-computed cases


def test_binary_relevance_with_several_relevant_passages():
    m = metric_values([["d1", "d2", "d3", "d4", "d5"]], [{"d2": 1, "d4": 1}])
    assert m["recall@1"] == [0] and m["mrr@1"] == [0] and m["ndcg@1"] == [0] and m["accuracy@1"] == [0]
    assert m["recall@3"] == [0.5] and m["precision@3"] == pytest.approx([1 / 3]) and m["mrr@3"] == [0.5]
    assert m["f1@3"] == pytest.approx([2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)])
    assert m["ndcg@3"] == pytest.approx([(1 / math.log2(3)) / (1 + 1 / math.log2(3))])
    assert m["map@3"] == pytest.approx([(1 / 2) / 2])
    assert m["recall@5"] == [1.0] and m["precision@5"] == [0.4] and m["accuracy@5"] == [1.0]
    assert m["ndcg@5"] == pytest.approx([(1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))])
    assert m["map@5"] == pytest.approx([(1 / 2 + 2 / 4) / 2])
    # Precision divides by k even when fewer passages were retrieved (as sentence-transformers).
    assert m["precision@100"] == [0.02]


def test_graded_relevance_uses_grades_as_gains_and_counts_unretrieved_relevant():
    # c has grade 3, a grade 1, x (grade 2) was never retrieved; b was judged non-relevant (0).
    m = metric_values([["a", "b", "c"]], [{"a": 1, "b": 0, "c": 3, "x": 2}])
    ideal = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@3"] == pytest.approx([(1 + 3 / math.log2(4)) / ideal])
    assert m["ndcg@1"] == pytest.approx([1 / 3])
    assert m["recall@3"] == pytest.approx([2 / 3])
    assert m["map@3"] == pytest.approx([(1 / 1 + 2 / 3) / 3])
    assert m["mrr@10"] == [1.0]


def test_tied_grades_and_a_query_without_relevant_passages():
    m = metric_values([["b", "a"], ["a", "b"]], [{"a": 2, "b": 2}, {"a": 0}])
    # Both relevant with equal grades: any order of them is ideal.
    assert m["ndcg@10"] == [1.0, 0.0] and m["map@10"] == [1.0, 0.0] and m["recall@1"] == [0.5, 0.0]


def test_integer_score_ties_rank_by_corpus_order():
    # Codes as bits: the query is 1111 0000; rows 1 and 3 are both at Hamming distance 2, row 2 at 0.
    corpus = torch.tensor([[0b00001111], [0b11000000], [0b11110000], [0b11110011]], dtype=torch.uint8)
    query = torch.tensor([[0b11110000]], dtype=torch.uint8)
    scores, indices = search.hamming_top_k(query, corpus, 4, query_chunk=1)
    assert indices.tolist() == [[2, 1, 3, 0]] and scores.tolist() == [[0, -2, -2, -8]]
    codes = torch.tensor([[1, 1], [2, 0], [1, 1], [0, 2]], dtype=torch.int8)
    _, indices = search.int8_top_k(torch.tensor([[1, 1]], dtype=torch.int8), codes, 4, query_chunk=1)
    assert indices.tolist() == [[0, 1, 2, 3]]


# --------------------------------------------------------------------- search primitives


def test_hamming_top_k_matches_popcount_on_packed_codes_across_corpus_chunks(monkeypatch):
    monkeypatch.setattr(search, "CORPUS_CHUNK", 7)
    rng = np.random.default_rng(0)
    corpus = rng.integers(0, 256, size=(50, 4), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(5, 4), dtype=np.uint8)
    distances = np.unpackbits(queries[:, None, :] ^ corpus[None, :, :], axis=-1).sum(-1)
    expected = np.lexsort((np.broadcast_to(np.arange(50), distances.shape), distances), axis=1)[:, :10]
    scores, indices = search.hamming_top_k(torch.from_numpy(queries), torch.from_numpy(corpus), 10, query_chunk=2)
    assert indices.tolist() == expected.tolist()
    assert (-scores.numpy() == np.take_along_axis(distances, expected, 1)).all()


def test_chunked_float_top_k_equals_full_sort():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(9, 16), dim=1)
    c = torch.nn.functional.normalize(torch.randn(40, 16), dim=1)
    scores, indices = search.top_k(q, c, 12, query_chunk=4, corpus_chunk=6)
    full = (q @ c.T).sort(dim=1, descending=True)
    assert indices.tolist() == full.indices[:, :12].tolist()
    assert torch.allclose(scores, full.values[:, :12])


def test_int8_ranges_are_calibrated_on_the_corpus():
    torch.manual_seed(0)
    corpus = torch.randn(200, 8)
    ranges = search.int8_ranges(corpus)
    assert np.allclose(ranges, [corpus.min(0).values.numpy(), corpus.max(0).values.numpy()])
    codes = search.int8_quantize(corpus, ranges)
    assert codes.dtype == torch.int8 and codes.min() == -128 and codes.max() == 127
    # A query far outside the corpus' range saturates instead of re-scaling the buckets.
    assert search.int8_quantize(torch.full((1, 8), 100.0), ranges).tolist() == [[127] * 8]


def test_binary_rescoring_reorders_candidates_by_the_float_query():
    # Two candidates at equal Hamming distance; the float query favours the second one's bits.
    corpus = torch.tensor([[0b10000000], [0b01000000]], dtype=torch.uint8)
    query = torch.tensor([[0.1, 0.9, 0, 0, 0, 0, 0, 0]])
    _, indices = search.rescore_binary(query, corpus, torch.tensor([[0, 1]]), 2)
    assert indices.tolist() == [[1, 0]]


def test_vectorised_judgements_match_the_reference_per_query_metrics():
    rng = np.random.default_rng(1)
    corpus_ids = [f"d{i}" for i in range(300)]
    query_ids = [f"q{i}" for i in range(20)]
    qrels = {q: {corpus_ids[j]: int(rng.integers(0, 4)) for j in rng.choice(300, size=rng.integers(1, 15), replace=False)}
             for q in query_ids}
    indices = np.array([rng.permutation(300)[:100] for _ in query_ids])
    fast = metrics.Judgements(query_ids, corpus_ids, qrels).metrics(indices)
    reference = metrics.per_query_metrics([[corpus_ids[i] for i in row] for row in indices], [qrels[q] for q in query_ids])
    for name in metrics.ALL_METRICS:
        assert np.allclose(fast[name], reference[name]), name


# ------------------------------------------------------------- maintained implementations


def test_metrics_agree_with_pytrec_eval_on_the_same_rankings():
    import pytrec_eval  # pinned in requirements.lock (the test extra): a missing one is a failure, not a skip
    rng = np.random.default_rng(7)
    corpus_ids = [f"d{i}" for i in range(400)]
    qrels, runs, ranked, judged = {}, {}, [], []
    for qi in range(30):
        qid = f"q{qi}"
        # Graded, several relevant per query (some more than k), some judged non-relevant.
        n_judged = int(rng.integers(1, 25))
        qrels[qid] = {corpus_ids[j]: int(rng.integers(0, 4)) for j in rng.choice(400, n_judged, replace=False)}
        if not any(g > 0 for g in qrels[qid].values()):
            qrels[qid][corpus_ids[int(rng.integers(400))]] = 1
        order = [corpus_ids[j] for j in rng.permutation(400)[:100]]
        # Put some relevant ones near the top so every cutoff is exercised.
        for pid in [p for p, g in qrels[qid].items() if g > 0][:3]:
            if pid in order:
                order.remove(pid)
            order.insert(int(rng.integers(0, 5)), pid)
        order = order[:100]
        ranked.append(order)
        judged.append(qrels[qid])
        # Distinct scores: pytrec_eval ranks by score, ours by list position.
        runs[qid] = {pid: float(100 - rank) for rank, pid in enumerate(order)}
    ours = metrics.per_query_metrics(ranked, judged)
    for k in metrics.CUTOFFS:
        truncated = {q: {p: s for p, s in run.items() if s > 100 - k} for q, run in runs.items()}
        trec = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{k}", f"P.{k}", f"recall.{k}", "recip_rank", "map"})
        full_scores = trec.evaluate(runs)
        cut_scores = trec.evaluate(truncated)
        for qi, qid in enumerate(runs):
            ref = full_scores[qid]
            n_relevant = sum(1 for g in qrels[qid].values() if g > 0)
            assert ours[f"ndcg@{k}"][qi] == pytest.approx(ref[f"ndcg_cut_{k}"], abs=1e-4)
            assert ours[f"precision@{k}"][qi] == pytest.approx(ref[f"P_{k}"], abs=1e-4)
            assert ours[f"recall@{k}"][qi] == pytest.approx(ref[f"recall_{k}"], abs=1e-4)
            assert ours[f"mrr@{k}"][qi] == pytest.approx(cut_scores[qid]["recip_rank"], abs=1e-4)
            # trec_eval's AP divides by #relevant; ours (as sentence-transformers) by min(k, #relevant).
            trec_map_at_k = cut_scores[qid]["map"]
            assert ours[f"map@{k}"][qi] == pytest.approx(trec_map_at_k * n_relevant / min(k, n_relevant), abs=1e-4)
            p, r = ref[f"P_{k}"], ref[f"recall_{k}"]
            assert ours[f"f1@{k}"][qi] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0, abs=1e-4)
            assert ours[f"accuracy@{k}"][qi] == float(r > 0)


def write_ir_set(folder: Path, rows: list[dict], languages: dict[str, str] | None = None) -> Path:
    """BEIR layout from make_rows(): one query per row, its own answer relevant."""
    folder.mkdir(parents=True, exist_ok=True)
    queries = [{"_id": f"q{i}", "text": r["question"], **({"language": languages[f"q{i}"]} if languages else {})}
               for i, r in enumerate(rows)]
    write_jsonl(folder / "queries.jsonl", queries)
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"d{i}", "text": r["answer"]} for i, r in enumerate(rows)])
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(len(rows))]
    # A query with two relevant passages.
    lines.append("q0\td1\t1")
    (folder / "qrels.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory):
    """One full evaluation of the tiny model against itself, with an extra collection and languages."""
    root = tmp_path_factory.mktemp("eval")
    rows = make_rows()
    languages = {f"q{i}": ("fr" if i % 3 == 0 else "en") for i in range(len(rows))}
    main = write_ir_set(root / "main", rows, languages)
    extra = write_ir_set(root / "extra-set", rows[:24])
    config = EvalConfig(batch_size=16, query_chunk_size=8, bootstrap_samples=200, extra_collections=(str(extra),))
    results = evaluator.evaluate(main, str(tiny_model_dir), str(tiny_model_dir), [64, 32, 16], "", "", config)
    return results, main, extra


def test_metrics_agree_with_sentence_transformers_evaluator_at_each_truncate_dim(evaluated, tiny_model_dir):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from medembed.artifacts import read_ir_set

    results, main, _ = evaluated
    queries, corpus, qrels = read_ir_set(main)
    for dim in (64, 32, 16):
        model = SentenceTransformer(str(tiny_model_dir), device="cpu", truncate_dim=dim)
        evaluator = InformationRetrievalEvaluator(
            queries, corpus, {q: set(p) for q, p in qrels.items()}, name="st",
            mrr_at_k=list(metrics.CUTOFFS), ndcg_at_k=list(metrics.CUTOFFS), accuracy_at_k=list(metrics.CUTOFFS),
            precision_recall_at_k=list(metrics.CUTOFFS), map_at_k=list(metrics.CUTOFFS), show_progress_bar=False)
        reference = evaluator(model)
        ours = results["finetuned"][str(dim)]
        compared = 0
        for key, value in reference.items():
            metric = key.split("_cosine_", 1)[-1].replace("mrr@", "mrr@").replace("map@", "map@")
            if metric in ours:
                assert ours[metric] == pytest.approx(value, abs=1e-4), (dim, metric)
                compared += 1
        assert compared >= 5 * len(metrics.CUTOFFS), reference.keys()


def test_evaluation_results_hold_grid_intervals_recommendation_and_slices(evaluated):
    results, _, extra = evaluated
    assert results["dims"] == [64, 32, 16] and results["precisions"] == list(EvalConfig().precisions)
    # Keys that registration and the model card read stay flat at float32.
    assert results["base"]["32"]["ndcg@10"] == results["grid"]["base"]["32"]["float32"]["ndcg@10"]
    cell = results["grid"]["finetuned"]["16"]["binary"]
    assert set(metrics.ALL_METRICS) <= set(cell) and cell["latency_ms_per_query"] > 0
    assert results["index"]["64"]["int8"] == {"bytes_per_vector": 64, "index_bytes": 64 * results["n_corpus"],
                                             "index_bytes_at_scale": 64 * 10_000_000}
    assert results["index"]["16"]["binary_rescore"]["bytes_per_vector"] == 2
    # The same model twice: every paired delta is exactly 0 and so is its interval.
    delta = results["deltas"]["32"]["int8"]["ndcg@10"]
    assert delta == {"delta": 0.0, "low": 0.0, "high": 0.0, "excludes_zero": False}
    low, high = results["intervals"]["finetuned"]["64"]
    assert low <= results["finetuned"]["64"]["ndcg@10"] <= high
    rec = results["recommendation"]
    assert rec["score"] >= rec["reference_score"] * (1 - rec["tolerance"]) - 1e-12
    assert rec["reference_score"] == results["finetuned"]["64"]["ndcg@10"]
    assert set(results["languages"]) == {"en", "fr"}
    assert results["languages"]["fr"]["n_queries"] == 16
    collection = results["collections"][extra.name]
    assert collection["n_queries"] == 24 and "recommendation" in collection
    assert json.loads(json.dumps(results)) == results  # results.json round-trips
    assert tables.isfinite_results(results)


def test_extra_collection_from_s3_uri(s3_endpoint, tmp_path):
    from medembed.storage import open_store

    folder = write_ir_set(tmp_path / "beir", make_rows(4))
    store = open_store("s3://eval-sets/medical/beir-small")
    for name in ("queries.jsonl", "corpus.jsonl", "qrels.tsv"):
        store.put_bytes(name, (folder / name).read_bytes())
    fetched = evaluator.fetch_collection("s3://eval-sets/medical/beir-small", tmp_path / "work")
    assert fetched.name == "beir-small"
    collection = evaluator.IRCollection("beir-small", fetched)
    assert len(collection.queries) == 12 and collection.fingerprint == artifacts.fingerprint(artifacts.ir_files(folder))


# ---------------------------------------------------------------- bootstrap and choice


def test_bootstrap_interval_of_a_constant_delta_is_that_constant():
    low, high = metrics.bootstrap_means(np.full(50, 0.25), 500, seed=1, confidence=0.95)
    assert low[0] == pytest.approx(0.25) and high[0] == pytest.approx(0.25)
    deltas = metrics.paired_deltas({"m": (np.zeros(50), np.full(50, 0.25))}, 500, 1, 0.95)["m"]
    assert deltas["excludes_zero"] and deltas["delta"] == pytest.approx(0.25)


def test_bootstrap_interval_matches_the_normal_approximation():
    # Half the queries gain 1, half lose 1: mean 0, standard error 1/sqrt(n).
    n = 400
    deltas = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    low, high = metrics.bootstrap_means(deltas, 4000, seed=3, confidence=0.95)
    half_width = 1.96 / math.sqrt(n)
    assert low[0] == pytest.approx(-half_width, rel=0.1) and high[0] == pytest.approx(half_width, rel=0.1)
    result = metrics.paired_deltas({"m": (np.zeros(n), deltas)}, 4000, 3, 0.95)["m"]
    assert not result["excludes_zero"]
    shifted = metrics.paired_deltas({"m": (np.zeros(n), deltas + 0.2)}, 4000, 3, 0.95)["m"]
    assert shifted["excludes_zero"] and shifted["low"] == pytest.approx(0.2 - half_width, abs=0.02)


def test_bootstrap_is_seeded():
    values = np.random.default_rng(0).normal(size=(100, 3))
    first = metrics.bootstrap_means(values, 300, seed=5, confidence=0.9)
    assert np.array_equal(first[0], metrics.bootstrap_means(values, 300, seed=5, confidence=0.9)[0])


def grid_of(scores: dict[tuple[int, str], float]) -> tuple[dict, dict]:
    grid = {str(d): {p: {"ndcg@10": s} for (dd, p), s in scores.items() if dd == d} for d, _ in scores}
    index = {str(d): {p: {"bytes_per_vector": search.bytes_per_vector(d, p), "index_bytes": 0, "index_bytes_at_scale": 0}
                      for (dd, p) in scores if dd == d} for d, _ in scores}
    return grid, index


def test_recommendation_is_the_smallest_index_within_tolerance():
    scores = {(256, "float32"): 0.80, (256, "int8"): 0.795, (256, "binary"): 0.70, (256, "binary_rescore"): 0.79,
              (64, "float32"): 0.785, (64, "int8"): 0.78, (64, "binary"): 0.60, (64, "binary_rescore"): 0.75}
    grid, index = grid_of(scores)
    dims, precisions = [256, 64], search.PRECISIONS
    # 2%: 0.784 needed. Candidates: 256/int8 (256 B), 256/binary_rescore (32 B), 64/float32 (256 B).
    rec = evaluator.recommend(grid, index, dims, precisions, 0.02)
    assert (rec["dim"], rec["precision"], rec["bytes_per_vector"]) == (256, "binary_rescore", 32)
    assert rec["compression"] == 32 and rec["relative_change"] == pytest.approx(-0.0125)
    # Tolerance 0: only the reference qualifies.
    assert evaluator.recommend(grid, index, dims, precisions, 0.0)["precision"] == "float32"
    # 30%: the 8-byte 64-dim binary cells qualify; rescoring scores better at equal size.
    rec = evaluator.recommend(grid, index, dims, precisions, 0.30)
    assert (rec["dim"], rec["precision"]) == (64, "binary_rescore")


# ----------------------------------------------------------------------- KFP surface


def test_kfp_metric_names_line_up_across_runs(evaluated):
    assert tables.kfp_metric_name("ndcg@10", 256, "int8") == "ndcg_at_10.dim_256.int8"
    assert tables.kfp_metric_name("ndcg@10", 256, "int8", "base") == "ndcg_at_10.dim_256.int8.base"
    results, _, _ = evaluated
    scalars = tables.kfp_metrics(results)
    assert scalars["ndcg_at_10.dim_16.binary_rescore"] == results["grid"]["finetuned"]["16"]["binary_rescore"]["ndcg@10"]
    assert scalars["recall_at_10.dim_32.float32.base"] == results["base"]["32"]["recall@10"]
    assert scalars["ndcg_at_10.dim_64.float32.delta_low"] == results["deltas"]["64"]["float32"]["ndcg@10"]["low"]
    assert scalars["recommended.dim"] == results["recommendation"]["dim"]
    assert all(math.isfinite(v) for v in scalars.values())


def test_pipeline_exposes_the_html_report_and_metrics():
    import yaml
    from kfp import compiler

    from medembed.config import load_config
    from pipelines.medical_embedding import build_pipeline

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.yaml"
        compiler.Compiler().compile(build_pipeline(load_config("local"), for_cluster=False), str(path))
        spec = next(yaml.safe_load_all(path.read_text()))
    outputs = spec["components"]["comp-evaluate-models"]["outputDefinitions"]["artifacts"]
    assert outputs["report_html"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.Markdown"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    # The evaluation settings reach the task through the run's resolved configuration.
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    tasks = {name: task for dag in dags for name, task in dag["tasks"].items()}
    # Inside the "retrain" branch the run's config arrives as the branch's input: resolve-config's output.
    assert tasks["evaluate-models"]["inputs"]["parameters"]["config"] == {
        "componentInputParameter": "pipelinechannel--resolve-config-Output"}
    profile = tasks["resolve-config"]["inputs"]["parameters"]["profile_config"]["runtimeValue"]["constant"]
    assert profile["eval"]["tolerance"] == EvalConfig().tolerance


def test_binary_rescoring_equals_the_float_query_against_unpacked_bits():
    rng = np.random.default_rng(4)
    embeddings = torch.from_numpy(rng.normal(size=(60, 20)).astype(np.float32))
    packed = search.binary_quantize(embeddings)
    query = torch.from_numpy(rng.normal(size=(3, 20)).astype(np.float32))
    candidates = torch.from_numpy(np.stack([rng.permutation(60)[:15] for _ in range(3)]))
    scores, indices = search.rescore_binary(query, packed, candidates, 5, max_elements=50)
    bits = np.unpackbits(packed.numpy(), axis=1)[:, :20]
    expected = np.einsum("qd,qcd->qc", query.numpy(), bits[candidates.numpy()])
    order = np.argsort(-expected, axis=1, kind="stable")[:, :5]
    assert indices.tolist() == np.take_along_axis(candidates.numpy(), order, 1).tolist()
    assert np.allclose(scores.numpy(), np.take_along_axis(expected, order, 1), atol=1e-5)
