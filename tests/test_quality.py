"""Issue 10: the methods that generalise (query augmentation, WiSE-FT), the built-in shifted probes that
prep writes and evaluation gates on, and the quality benchmark's hold-out probes and selection."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
from pathlib import Path

import pytest

from medembed import artifacts
from medembed.config import LOCAL, TRAIN_OPERATIONAL_FIELDS, ConfigError, DataConfig, EvalConfig, RegistryConfig, TrainConfig, load_config
from medembed.evaluate import evaluator, quality, report, tables
from medembed.prep import dedup, holdout, probes, stage
from medembed.register.gate import decide_promotion
from medembed.train import augment, recipe, wiseft

SOURCES = ["GARD", "GHR", "CancerGov", "MPlusHealthTopics", "NIHSeniorHealth"]
QTYPES = {"symptoms": "What are the symptoms of {} ?", "treatment": "What are the treatments for {} ?",
          "causes": "What causes {} ?", "information": "What is (are) {} ?"}


def medquad_like(n_topics: int = 60, seed: int = 0) -> list[dict]:
    """MedQuAD-shaped rows: topics with several question types, answers long enough to halve, one
    answer text shared by two topics."""
    rng = random.Random(seed)
    rows = []
    for t in range(n_topics):
        focus = f"Disease{t} syndrome"
        source = SOURCES[t % len(SOURCES)]
        for qtype, template in QTYPES.items():
            answer = (f"{focus} {qtype} description number {t}. It is a chronic renal condition of the heart. "
                      f"Patients with {focus} often report fatigue and pain in several places. "
                      f"Treatment {rng.randint(0, 10**6)} varies with age and general health of the person. "
                      f"It is usually diagnosed in childhood by a specialist doctor after several tests.")
            rows.append({"uid": f"{t}-{qtype}", "source": source, "doc_id": f"{source}/{t}", "focus": focus,
                         "cuis": [f"C{t:05d}"], "qtype": qtype, "question": template.format(focus), "answer": answer})
    rows[1]["answer"] = rows[5]["answer"]
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def texts(folder: Path) -> tuple[list[str], list[str]]:
    queries = [r["text"] for r in artifacts.read_jsonl(Path(folder) / artifacts.QUERIES_FILE)]
    corpus = [r["text"] for r in artifacts.read_jsonl(Path(folder) / artifacts.CORPUS_FILE)]
    return queries, corpus


# ------------------------------------------------------------------ configuration


def test_new_knobs_are_validated_and_change_the_training_signature():
    train = TrainConfig()
    assert (train.augment, train.augment_rate, train.wise_alpha, train.matryoshka_weights) == ((), 0.0, 1.0, ())
    for change in ({"augment": ("stripped",), "augment_rate": 0.5}, {"wise_alpha": 0.4}, {"matryoshka_weights": (2,) + (1,) * 6}):
        assert not set(change) & TRAIN_OPERATIONAL_FIELDS
        assert dataclasses.replace(train, **change).signature() != train.signature()
    bad = [("train.wise_alpha=1.5", "train.wise_alpha=1.5: must be in [0, 1]"),
           ("train.augment=stripped,bogus", "train.augment=('stripped', 'bogus'): entries must be distinct, among stripped, keywords, sentence"),
           ("train.augment_rate=2", "train.augment_rate=2.0: must be in [0, 1]"),
           ("train.matryoshka_weights=1,1", "train.matryoshka_weights=(1.0, 1.0): give one positive weight per dim"),
           ("data.shift_probes=keyword,keyword", "data.shift_probes=('keyword', 'keyword'): entries must be distinct"),
           ("data.shift_probes=french", "data.shift_probes=('french',): entries must be distinct, among keyword, topic")]
    for override, message in bad:
        with pytest.raises(ConfigError) as error:
            load_config("local", [override])
        assert str(error.value).startswith(message), str(error.value)
    with pytest.raises(ConfigError, match="wise_alpha=0.4: mixes fully fine-tuned weights with the base, not LoRA adapters: "
                                          "set train.wise_alpha=1 with train.lora_r > 0"):
        load_config("local", ["train.lora_r=8"])  # the local profile mixes at 0.4
    assert load_config("local", ["train.lora_r=8", "train.wise_alpha=1"]).train.lora_r == 8
    assert load_config("local", ["data.shift_probes="]).data.shift_probes == ()
    assert DataConfig().shift_probes == ("keyword", "lay", "misspell", "halves")


def test_local_profile_adopts_augmentation_and_wise_ft():
    """docs/QUALITY.md: on the bundled sample, augmentation at rate 1.0 with WiSE-FT weight 0.4 removed the
    significant regressions on the shifted probes; the cluster profile keeps its reference recipe."""
    assert (LOCAL.train.augment, LOCAL.train.augment_rate, LOCAL.train.wise_alpha) == (
        ("stripped", "keywords", "sentence"), 1.0, 0.4)
    assert LOCAL.data.shift_probes == ("keyword", "lay", "misspell", "halves")
    cluster = load_config("cluster")
    assert (cluster.train.augment, cluster.train.wise_alpha) == ((), 1.0)


# ------------------------------------------------------------------ training methods


def test_augmentation_is_deterministic_and_keeps_positives():
    rows = [{"anchor": template.format(f"Disease{t} syndrome"), "positive": f"Disease{t} is rare. It affects the heart of children and adults. More text here."}
            for t in range(100) for template in QTYPES.values()]
    one = augment.augment_rows(rows, augment.AUGMENT_KINDS, 0.5, seed=3)
    assert one == augment.augment_rows(rows, augment.AUGMENT_KINDS, 0.5, seed=3)
    assert one != augment.augment_rows(rows, augment.AUGMENT_KINDS, 0.5, seed=4)
    assert one[: len(rows)] == rows and len(rows) < len(one) <= int(1.5 * len(rows)) + 1
    positives = {r["positive"] for r in rows}
    for row in one[len(rows):]:
        assert row["positive"] in positives and row["anchor"] not in {r["anchor"] for r in rows}
    template = augment.template_words([r["anchor"] for r in rows], 0.02)
    assert augment.stripped("What are the symptoms of Disease3 syndrome ?", template) == "Disease3"
    assert augment.augment_rows(rows, (), 0.5, 1) == rows
    with pytest.raises(ValueError):
        augment.augment_rows(rows, ("bogus",), 0.5, 1)


def test_wiseft_end_points_equal_base_and_finetuned(tiny_model_dir, tmp_path):
    import torch

    from medembed.models import load_model

    base = load_model(str(tiny_model_dir), device="cpu")
    tuned = load_model(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    tuned_state = {k: v.clone() for k, v in tuned.state_dict().items()}
    for alpha, expected in ((0.0, base_state), (1.0, tuned_state)):
        mixed = wiseft.interpolate_state(base_state, tuned_state, alpha)
        assert all(torch.equal(mixed[k], expected[k]) for k in expected)
    half = wiseft.interpolate_state(base_state, tuned_state, 0.5)
    key = next(k for k, v in base_state.items() if v.is_floating_point())
    assert torch.allclose(half[key], (base_state[key] + tuned_state[key]) / 2)
    tuned.save(str(tmp_path / "tuned"))
    out = wiseft.mix_folder(str(tiny_model_dir), tmp_path / "tuned", tmp_path / "mixed", 0.0)
    sample = ["What causes gout ?"]
    assert torch.allclose(load_model(str(out), device="cpu").encode(sample, convert_to_tensor=True),
                          base.encode(sample, convert_to_tensor=True), atol=1e-6)
    with pytest.raises(ValueError):
        wiseft.interpolate_state(base_state, tuned_state, 1.5)


def _train_dir(tmp_path: Path) -> Path:
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    rows = [{"anchor": template.format(f"topic{t}"), "positive": f"Answer about topic{t} number {i}. It is long enough here."}
            for t in range(12) for i, template in enumerate(QTYPES.values())]
    artifacts.write_jsonl(train_dir / artifacts.TRAIN_FILE, rows)
    return train_dir


def test_recipe_augments_weights_the_dims_and_mixes_with_the_base(tiny_model_dir, tmp_path):
    """The TrainConfig knobs through the training recipe: augmentation adds rows (recorded), Matryoshka
    weights reach the loss, wise_alpha=0 exports the base weights and records the weight."""
    import torch

    from medembed.models import load_model
    from medembed.train.losses import build_loss

    config = TrainConfig(base_model=str(tiny_model_dir), matryoshka_dims=(64, 32), epochs=1, batch_size=8,
                         max_seq_length=32, eval_steps=0, warmup_steps=0, augment=("stripped", "sentence"),
                         augment_rate=1.0, matryoshka_weights=(2.0, 1.0), wise_alpha=0.0, learning_rate=1e-3,
                         packed_attention="off", compile_layers="off")
    loss = build_loss(load_model(str(tiny_model_dir), device="cpu"), config)
    assert list(loss.matryoshka_weights) == [2.0, 1.0]
    info = recipe.train(_train_dir(tmp_path), tmp_path / "model", config, tmp_path / "work")
    assert info.train_pairs == 48 and info.augmented_rows > 0 and info.wise_alpha == 0.0
    assert artifacts.TrainingInfo.read(tmp_path / "model").augmented_rows == info.augmented_rows
    exported = load_model(str(tmp_path / "model"), device="cpu").state_dict()
    base = load_model(str(tiny_model_dir), device="cpu").state_dict()
    assert all(torch.allclose(exported[k].float(), base[k].float()) for k in base)


def test_half_mix_lies_between_base_and_fine_tune(tiny_model_dir, tmp_path):
    import torch

    from medembed.models import load_model

    settings = dict(base_model=str(tiny_model_dir), matryoshka_dims=(64, 32), epochs=1, batch_size=8,
                    max_seq_length=32, eval_steps=0, warmup_steps=0, learning_rate=1e-3, packed_attention="off",
                    compile_layers="off")
    train_dir = _train_dir(tmp_path)
    recipe.train(train_dir, tmp_path / "tuned", TrainConfig(**settings), tmp_path / "w1")
    recipe.train(train_dir, tmp_path / "half", TrainConfig(**settings, wise_alpha=0.5), tmp_path / "w2")
    base, tuned, half = (load_model(str(p), device="cpu").state_dict()
                         for p in (tiny_model_dir, tmp_path / "tuned", tmp_path / "half"))
    moved = [k for k in base if base[k].is_floating_point() and not torch.equal(base[k], tuned[k])]
    assert moved
    assert all(torch.allclose(half[k], (base[k] + tuned[k]) / 2, atol=1e-6) for k in moved)


# ------------------------------------------------------------------ built-in shifted probes (prep)


def _prep(tmp_path: Path, rows: list[dict], model: Path, **data) -> tuple[Path, Path, object]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(LOCAL.data, data_uri=str(write_rows(tmp_path / "rows.jsonl", rows)), num_negatives=0,
                                 max_train_pairs=0, test_fraction=0.3, dev_fraction=0.0, eval_distractors=20, **data)
    stats = stage.prepare(config, tmp_path / "train", tmp_path / "eval", model=str(model), max_seq_length=64,
                          work_dir=tmp_path / "work")
    return tmp_path / "train", tmp_path / "eval", stats


def test_prep_writes_shifted_probes_from_the_test_split(tiny_model_dir, tmp_path):
    train_dir, eval_dir, stats = _prep(tmp_path, medquad_like(), tiny_model_dir,
                                       shift_probes=("keyword", "topic", "lay", "misspell", "para", "halves"))
    manifest = artifacts.read_probe_manifest(eval_dir)
    assert list(manifest) == ["keyword", "topic", "lay", "misspell", "para", "halves"] and stats.shift_probes == manifest
    main_queries, main_corpus = texts(eval_dir)
    main = evaluator.IRCollection("main", eval_dir)
    train_questions = {dedup.exact_key(r["anchor"]) for r in artifacts.read_jsonl(train_dir / artifacts.TRAIN_FILE)}
    train_passages = {dedup.exact_key(r["positive"]) for r in artifacts.read_jsonl(train_dir / artifacts.TRAIN_FILE)}
    for name, entry in manifest.items():
        folder = eval_dir / artifacts.PROBES_DIR / name
        collection = evaluator.IRCollection(name, folder)  # readable by the evaluation, every query judged
        queries, corpus = texts(folder)
        assert len(collection.queries) == entry["queries"] == len(queries) > 0
        assert entry["shares_main_corpus"] == (entry["kind"] == probes.QUERY_STYLE)
        if entry["shares_main_corpus"]:
            # The same texts in the same order: the evaluation encodes them once per model.
            assert corpus == main_corpus
            assert {p for rel in collection.qrels.values() for p in rel} <= set(main.corpus)
        assert not {dedup.exact_key(q) for q in queries} & ({dedup.exact_key(q) for q in main_queries} | train_questions), name
        assert not {dedup.exact_key(t) for t in corpus} & train_passages or entry["shares_main_corpus"], name
    keyword = texts(eval_dir / "probes" / "keyword")[0]
    assert all("?" not in q and q == q.lower() for q in keyword)
    assert any("kidney" in q or "condition" in q for q in texts(eval_dir / "probes" / "lay")[0])
    # Seeded: the same data gives the same probes.
    _, again, _ = _prep(tmp_path / "again", medquad_like(), tiny_model_dir,
                        shift_probes=("keyword", "topic", "lay", "misspell", "para", "halves"))
    for name in manifest:
        assert texts(again / "probes" / name) == texts(eval_dir / "probes" / name)
    assert "Built-in shifted probes" in (train_dir / artifacts.CARD_MARKDOWN_FILE).read_text()


def test_probes_without_topic_fields_fall_back_or_are_skipped(tiny_model_dir, tmp_path):
    rows = [{k: v for k, v in r.items() if k not in ("focus", "qtype")} for r in medquad_like()]
    for row in rows[::2]:
        row["question"] = row["question"].replace("syndrome", "renal syndrome")
    for row in rows[1::4]:
        row["question"] = row["question"].replace(" syndrome", "")  # no medical word: no lay query
    _, eval_dir, stats = _prep(tmp_path, rows, tiny_model_dir,
                               shift_probes=("keyword", "topic", "lay", "misspell", "para", "halves"))
    assert set(stats.shift_probes) == {"keyword", "lay", "misspell", "halves"}
    skipped = json.loads((eval_dir / "probes" / artifacts.PROBES_MANIFEST_FILE).read_text())["skipped"]
    assert set(skipped) == {"topic", "para"}
    # The question's content words, shuffled; lay words for medical ones.
    assert all(" " in q and "what" not in q.split() for q in texts(eval_dir / "probes" / "keyword")[0])
    lay = texts(eval_dir / "probes" / "lay")[0]
    assert lay and all("condition" in q and "syndrome" not in q for q in lay) and any("kidney condition" in q for q in lay)


def test_no_shift_probes_means_no_probe_folder_and_the_same_fingerprint(tiny_model_dir, tmp_path):
    _, with_probes, a = _prep(tmp_path / "a", medquad_like(), tiny_model_dir)
    _, without, b = _prep(tmp_path / "b", medquad_like(), tiny_model_dir, shift_probes=())
    assert (with_probes / "probes").is_dir() and not (without / "probes").exists()
    assert artifacts.read_probe_manifest(without) == {}
    # The prepared training and evaluation data are the same: probes do not make a run retrain.
    assert a.fingerprint == b.fingerprint


# ------------------------------------------------------------------ evaluation, report and gate


def test_evaluation_scores_probes_as_guards_and_encodes_the_shared_corpus_once(tiny_model_dir, tmp_path, monkeypatch):
    import medembed.encoding as encoding

    _, eval_dir, stats = _prep(tmp_path, medquad_like(), tiny_model_dir)
    encoded: list[tuple[str, int]] = []
    real = encoding.encode

    def counting(model, texts_, kind, *args, **kwargs):
        encoded.append((kind, len(texts_)))
        return real(model, texts_, kind, *args, **kwargs)

    monkeypatch.setattr(encoding, "encode", counting)
    config = EvalConfig(batch_size=16, bootstrap_samples=200)
    results = evaluator.evaluate(eval_dir, str(tiny_model_dir), str(tiny_model_dir), [64, 32], "", "", config)
    guards = results["collections"]
    assert list(guards) == [f"probe:{name}" for name in stats.shift_probes] == [
        "probe:keyword", "probe:lay", "probe:misspell", "probe:halves"]
    for name, collection in guards.items():
        assert collection["guard"] and collection["kind"].startswith("built-in probe")
        assert collection["precisions"] == ["float32"]
        assert collection["deltas"]["32"]["float32"]["ndcg@10"]["delta"] == 0.0  # the same model twice
    n_corpus = results["n_corpus"]
    # Per model: the main corpus once (not once per query-style probe), the halves corpus once.
    documents = [n for kind, n in encoded if kind == "document"]
    assert documents.count(n_corpus) == 2 and len(documents) == 4
    assert results["settings"]["encoded_texts"]["base"] == sum(n for _, n in encoded) // 2
    decision = decide_promotion(results, RegistryConfig())
    assert {row["collection"] for row in decision.checks} == {"main", *guards}
    # The report: every collection side by side, then each in detail (probes at float32, no index grid).
    text = report.render_markdown(results)
    assert "## Every collection side by side" in text and "| probe:halves | built-in probe, forgetting |" in text
    assert text.count("### Dimension × precision") == 1
    metrics = tables.kfp_metrics(results)
    assert "guard.probe_keyword.ndcg_at_10.dim_32.delta_low" in metrics


def test_report_marks_a_significant_regression_on_a_probe():
    from test_report import synthetic_results

    results = synthetic_results()
    probe = synthetic_results(seed=3, n_queries=80, with_collection=False)
    for d in probe["dims"]:
        probe["deltas"][str(d)]["float32"]["ndcg@10"] = {"delta": -0.05, "low": -0.08, "high": -0.02, "excludes_zero": True}
    probe.update(kind="built-in probe, forgetting", description="second half -> first half", guard=True)
    results["collections"]["probe:halves"] = probe
    headers, rows = report.side_by_side_table(results)
    halves = next(row for row in rows if row[0] == "probe:halves")
    assert all(cell.endswith("▼") for cell in halves[3:]) and len(halves) == 3 + len(results["dims"])
    assert not any(cell.endswith("▼") for cell in rows[0][3:])
    decision = decide_promotion(results, RegistryConfig())
    assert not decision.promote and any(r.startswith("guard collection 'probe:halves'") for r in decision.reasons)
    assert "probe:halves (80 queries)" in tables.guard_text(results) and "(worse)" in tables.guard_text(results)


# ------------------------------------------------------------------ the benchmark's hold-out probes and selection


def test_holdout_probes_never_contain_a_training_row_or_group(tmp_path):
    rows = medquad_like()
    probe_set = holdout.build(rows, tmp_path, holdout.HoldoutConfig(probe_fraction=0.2, dev_fraction=0.1, max_queries=0))
    train = artifacts.read_jsonl(Path(probe_set.train_side))
    assert train and probe_set.collections and probe_set.dev_collections
    train_answers = {dedup.exact_key(r["answer"]) for r in train}
    train_questions = {dedup.exact_key(r["question"]) for r in train}
    train_keys = {(f, str(r[f]).lower()) for r in train for f in ("doc_id", "focus")}
    assert not {r["source"] for r in train} & set(holdout.DEFAULT_HOLDOUT_SOURCES)
    for name, folder in {**probe_set.collections, **probe_set.dev_collections}.items():
        queries, corpus = texts(Path(folder))
        assert queries, name
        assert not {dedup.exact_key(t) for t in corpus} & train_answers, name
        assert not {dedup.exact_key(t) for t in queries} & train_questions, name
        assert evaluator.IRCollection(name, Path(folder)).queries
    held_out = [r for r in holdout.normalise_rows(rows, holdout.HoldoutConfig())
                if dedup.exact_key(r["answer"]) not in train_answers]
    assert not {(f, str(r[f]).lower()) for r in held_out for f in ("doc_id", "focus")} & train_keys
    uids = {r["uid"] for r in train}
    assert (rows[1]["uid"] in uids) == (rows[5]["uid"] in uids)
    reported = {dedup.exact_key(t) for folder in probe_set.collections.values() for t in texts(Path(folder))[1]}
    for folder in probe_set.dev_collections.values():
        assert not {dedup.exact_key(t) for t in texts(Path(folder))[1]} & reported


def test_french_probe(tmp_path):
    path = tmp_path / "fr.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for i in range(3):
            handle.write(json.dumps({"id": f"q{i}", "question": f"Quelle est la dose {i} ?", "options":
                                     {"a": f"option a{i}", "b": f"option b{i}"}, "correct": ["b"]}) + "\n")
    collection = evaluator.IRCollection("french", Path(holdout.french_probe(path, tmp_path / "french")))
    assert len(collection.queries) == 3 and len(collection.corpus) == 6
    assert set(collection.languages) == {"fr"}
    assert all(list(rel) == [f"q{i}-b"] for i, rel in enumerate(collection.qrels.values()))


def test_choose_alpha_prefers_the_base_when_the_fine_tune_hurts(tiny_model_dir, tmp_path):
    """A 'fine-tune' that is pure noise scores worse than the base on the dev probes: the selection moves
    toward the base (a small alpha) and leaves the model holding that mix."""
    import torch

    from medembed.models import load_model

    probe_set = holdout.build(medquad_like(), tmp_path, holdout.HoldoutConfig(probe_fraction=0.2, dev_fraction=0.2))
    scorer = quality.ProbeScorer(quality.load_collections(probe_set.dev_collections), [64, 32], batch_size=16)
    base = load_model(str(tiny_model_dir), device="cpu")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    base_pq = scorer.per_query(base)
    model = load_model(str(tiny_model_dir), device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 2.0)
    noisy = {k: v.clone() for k, v in model.state_dict().items()}
    alpha, trials = quality.choose_alpha(model, base_state, scorer, base_pq, [0.0, 0.5, 1.0])
    assert [t["alpha"] for t in trials] == [0.0, 0.5, 1.0]
    assert trials[0]["score"] == pytest.approx(0.0)
    assert alpha == max(trials, key=lambda t: (round(t["score"], 6), t["alpha"]))["alpha"] and alpha < 1.0
    expected = wiseft.interpolate_state(base_state, noisy, alpha)
    assert all(torch.allclose(model.state_dict()[k], expected[k]) for k in expected)


def test_dev_probe_early_stopping_exports_the_best_scored_weights(tiny_model_dir, tmp_path):
    import torch

    from medembed.models import load_model

    probe_set = holdout.build(medquad_like(), tmp_path / "probes", holdout.HoldoutConfig(probe_fraction=0.2, dev_fraction=0.2))
    scorer = quality.ProbeScorer(quality.load_collections(probe_set.dev_collections), [64, 32], batch_size=16)
    base_pq = scorer.per_query(load_model(str(tiny_model_dir), device="cpu"))
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    artifacts.write_jsonl(train_dir / artifacts.TRAIN_FILE, ({"anchor": r["question"], "positive": r["answer"]}
                                                             for r in artifacts.read_jsonl(Path(probe_set.train_side))))
    callback = quality.dev_probe_callback(scorer, base_pq, every=2)
    config = TrainConfig(base_model=str(tiny_model_dir), matryoshka_dims=(64, 32), epochs=1, batch_size=8,
                         max_seq_length=32, eval_steps=0, warmup_steps=0, learning_rate=5e-3,
                         packed_attention="off", compile_layers="off")
    info = recipe.train(train_dir, tmp_path / "model", config, tmp_path / "work", callbacks=[callback])
    steps = [h["step"] for h in callback.history]
    assert steps[-1] == info.steps and len(steps) >= 2
    assert callback.best["score"] == max(h["score"] for h in callback.history)
    exported = load_model(str(tmp_path / "model"), device="cpu").state_dict()
    assert all(torch.allclose(exported[k].float(), callback.best_state[k].float()) for k in callback.best_state)


def test_bench_quality_runs_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path):
    """bench/bench_quality.py through the product's prep, training and evaluation: every arm gets every
    probe and dim with intervals, the chosen arm a dev-chosen WiSE-FT weight, the markdown block its
    markers, and the last line names the saved model (what `make train-best` prints)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    data = write_rows(tmp_path / "rows.jsonl", medquad_like(80))
    arms = tmp_path / "arms.json"
    # Arms change the local profile's settings before issue 10 (no augmentation, no mixing), as in phase 1.
    arms.write_text(json.dumps([{"name": "main", "train": {"batch_size": 8}},
                                {"name": "chosen", "train": {"batch_size": 8, "augment": ["stripped", "sentence"],
                                                             "augment_rate": 0.5}, "wise_grid": [0.5, 1.0]}]))
    out, md = tmp_path / "q.json", tmp_path / "Q.md"
    md.write_text("# Narrative kept\n")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, str(root / "bench" / "bench_quality.py"), "--data", str(data), "--base-model",
                           str(tiny_model_dir), "--dims", "64,32", "--arms-json", str(arms), "--out", str(out), "--markdown", str(md),
                           "--work", str(tmp_path / "work"), "--max-queries", "20", "--save-model", str(tmp_path / "models")],
                          capture_output=True, text=True, env=env, timeout=900, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"model: {tmp_path / 'models' / 'chosen'}"
    result = json.loads(out.read_text())
    for name in ("main", "chosen"):
        table = result["arms"][name]["ndcg@10"]
        assert {"template", "keyword", "lay", "misspell", "halves", "lso", "in_template_prep"} <= set(table)
        assert all({"base", "model", "low", "high"} <= set(row) for probe in table.values() for row in probe.values())
    assert result["arms"]["chosen"]["wise_alpha"] in (0.5, 1.0) and "wise_alpha" not in result["arms"]["main"]
    assert result["arms"]["main"]["methods"] == {"augment": [], "augment_rate": 0.0, "wise_alpha": 1.0, "matryoshka_weights": []}
    assert result["arms"]["chosen"]["train_rows"] > result["arms"]["main"]["train_rows"]
    saved = artifacts.TrainingInfo.read(tmp_path / "models" / "chosen")
    assert saved.wise_alpha == result["arms"]["chosen"]["wise_alpha"]
    text = md.read_text()
    assert text.startswith("# Narrative kept") and "<!-- bench-quality:rows-cpu-main+chosen:start -->" in text
