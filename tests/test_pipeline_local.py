"""The whole pipeline through kfp.local on a tiny random model: every stage's real code path."""

import json
from pathlib import Path

import pytest

from conftest import make_rows, write_jsonl
from faultkit import case, observe
from medembed.config import load_config
from medembed.local_run import run_local
from medembed.prep import DataError
from medembed.prep import stage as prep_stage


def tiny_config(tmp_path, model_dir, data_uri):
    return load_config(
        "local",
        {
            "data.data_uri": str(data_uri),
            "data.max_train_pairs": 0,
            "data.min_train_pairs": 4,
            "data.dev_fraction": 0.0,
            "data.test_fraction": 0.25,
            # Mining and negative columns ride through every stage, as on the cluster.
            "data.num_negatives": 1,
            "train.base_model": str(model_dir),
            "train.matryoshka_dims": "64,32,16",
            "train.batch_size": 8,
            "train.warmup_steps": 0,
            "train.max_seq_length": 32,
            "registry.registry_uri": str(tmp_path / "registry"),
        },
    )


def test_pipeline_runs_end_to_end_and_registers(tmp_path, tiny_model_dir, pairs_file, capsys):
    from sentence_transformers import SentenceTransformer

    outcome = run_local(tiny_config(tmp_path, tiny_model_dir, pairs_file), tmp_path / "runs")
    console = capsys.readouterr().out
    for title in ("configuration", "data prep", "training", "Matryoshka evaluation", "model registration"):
        assert f"▶ {title}" in console and f"✓ {title}: success" in console

    model_dir = tmp_path / "registry" / "medical-embeddings" / "v0001" / "model"
    assert outcome["model_uri"] == str(model_dir)
    results = outcome["results"]
    assert results["dims"] == [64, 32, 16]
    for label in ("base", "finetuned"):
        for dim in ("64", "32", "16"):
            metrics = results[label][dim]
            for name in ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@5", "recall@10",
                         "precision@1", "precision@5", "precision@10", "f1@10"):
                assert 0.0 <= metrics[name] <= 1.0
    manifest = outcome["manifest"]
    assert manifest["version"] == 1
    assert manifest["base_model"] == str(tiny_model_dir)
    assert manifest["index_contract"]["valid_dims"] == [64, 32, 16]
    assert manifest["data_fingerprint"] and manifest["eval_fingerprint"] == results["eval_fingerprint"]
    assert (model_dir / "README.md").read_text().startswith("---")
    train_rows = (next((tmp_path / "runs").rglob("train_data/train.jsonl"))).read_text().splitlines()
    assert set(json.loads(train_rows[0])) == {"anchor", "positive", "negative_1"}

    model = SentenceTransformer(str(model_dir), device="cpu", truncate_dim=16)
    assert model.encode_query(["What causes gout ?"]).shape == (1, 16)

    # Training changed the model: the registered weights are not the base model's.
    from safetensors.torch import load_file

    base, tuned = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(model_dir / "model.safetensors"))
    assert base.keys() == tuned.keys()
    assert max(float((base[k] - tuned[k]).abs().max()) for k in base) > 1e-5  # an unchanged export gives exactly 0

    # The gate's decision, as recorded and shown: on this tiny set the fine-tuned model is not significantly
    # better than the (already near-perfect) base at any dim, so it is registered but not promoted.
    assert outcome["promoted"] is False and outcome["champion"] is None
    assert manifest["gate"]["promote"] is False and manifest["gate"]["gated_dims"] == [64, 32, 16]
    assert outcome["decision"].startswith("**Not promoted.** dim 64: ndcg@10 vs base ")
    for dim in ("64", "32", "16"):
        delta = results["deltas"][dim]["float32"]["ndcg@10"]
        assert delta["low"] <= 0.0  # the rule the decision applied, on the numbers it was given
        reason = (f"dim {dim}: ndcg@10 vs base {delta['delta']:+.4f} [{delta['low']:+.4f}, {delta['high']:+.4f}]: "
                  "the interval's lower end is not above registry.min_ndcg_gain=0.0")
        assert reason in manifest["gate"]["reasons"] and reason in outcome["decision"]
    assert "**Not promoted.**" in (model_dir / "README.md").read_text()

    # The local run keeps its artifacts, and its config, for inspection.
    run_root = tmp_path / "runs"
    assert json.loads(next(run_root.glob("*/config.json")).read_text())["profile"] == "local"


@case(fault='run-local with an input file that does not exist',
      promise='the data snapshot task fails naming the file; the console names the stage; nothing trained or registered')
def test_bad_input_fails_in_prep_and_registers_nothing(tmp_path, tiny_model_dir, capsys):
    from medembed.local_run import LocalRunFailed

    config = tiny_config(tmp_path, tiny_model_dir, tmp_path / "missing.jsonl")
    # The data snapshot, the first task that reads the input, already names it.
    with pytest.raises(LocalRunFailed, match=r"data snapshot failed: DataError: input file not found: .*missing.jsonl") as failure:
        run_local(config, tmp_path / "runs")
    # The console says which stage failed; the executor's dumps stay in the run's log file.
    console = capsys.readouterr().out
    assert "▶ data snapshot" in console and "✗ data snapshot: failure" in console
    assert "Got executor_input" not in console
    assert "Got executor_input" in next((tmp_path / "runs").glob("*/pipeline.log")).read_text()
    assert not (tmp_path / "registry").exists() or not any((tmp_path / "registry").rglob("manifest.json"))
    train_dirs = list((tmp_path / "runs").rglob("train-model"))
    assert train_dirs == [], "training must not start after prep failed"
    observe(str(failure.value))


def _prep(tmp_path, path, **overrides):
    config = load_config("local", {"data.data_uri": str(path), "data.min_train_pairs": 4, **overrides})
    return prep_stage.run(config, tmp_path / "train", tmp_path / "eval")


@case(fault='unusable input through the prep stage: {id}',
      promise='one DataError naming the file and the problem; no outputs')
@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "empty"),
        ([{"q": "What is gout ?", "a": "A form of arthritis."}], "has no field 'question'"),
        ([{"question": "What is gout ?", "answer": "A form of arthritis."}] * 40, "duplicate"),
        ([{"question": " ", "answer": ""}] * 5, "no usable pairs"),
    ],
    ids=["empty", "wrong-columns", "all-duplicates", "all-empty"],
)
def test_bad_input_messages_name_the_problem(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message) as error:
        _prep(tmp_path, path)
    assert str(path) in str(error.value)
    assert not (tmp_path / "train").exists(), "a failed prep must leave no outputs behind"
    observe(str(error.value))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="input file not found: .*nowhere.jsonl"):
        _prep(tmp_path, tmp_path / "nowhere.jsonl")


def test_prep_refuses_dims_beyond_the_model_before_reading_any_data(tmp_path, tiny_model_dir):
    from medembed.config import ConfigError

    config = load_config("local", {"train.base_model": str(tiny_model_dir), "train.matryoshka_dims": "128,64",
                                   "data.data_uri": str(tmp_path / "not-read.jsonl")})
    with pytest.raises(ConfigError, match=r"train.matryoshka_dims=\[128, 64\]: .* embeds in 64 dims"):
        prep_stage.run(config, tmp_path / "train", tmp_path / "eval")
    assert not (tmp_path / "train").exists()


def test_split_keeps_every_group_on_one_side(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", make_rows())
    stats = _prep(tmp_path, path, **{"data.test_fraction": 0.25, "data.dev_fraction": 0.1})
    assert stats.groups_crossing_splits == 0
    train_queries = {json.loads(l)["anchor"] for l in (tmp_path / "train/train.jsonl").read_text().splitlines()}
    eval_queries = {json.loads(l)["text"] for l in (tmp_path / "eval/queries.jsonl").read_text().splitlines()}
    topic = lambda q: q.rstrip(" ?").split()[-1]
    assert not {topic(q) for q in train_queries} & {topic(q) for q in eval_queries}


def test_any_field_can_be_set_per_run_and_reaches_the_stage_unchanged(tmp_path, tiny_model_dir):
    """The compiled pipeline's run form: a named parameter (loss) and `overrides` for fields without
    one (train.lora_r, eval.precisions, data.column_map), seen by the stages' own code."""
    import yaml
    from kfp import compiler

    import kfp.local
    from medembed.local_run import absolute_local_paths
    from pipelines.medical_embedding import build_pipeline

    rows = [{"prompt": r["question"], **{k: v for k, v in r.items() if k != "question"}} for r in make_rows()]
    data = write_jsonl(tmp_path / "renamed.jsonl", rows)  # no "question" column: only data.column_map saves prep
    config = absolute_local_paths(tiny_config(tmp_path, tiny_model_dir, data))
    pipeline = build_pipeline(config, for_cluster=False)

    compiler.Compiler().compile(pipeline, str(tmp_path / "pipeline.yaml"))
    form = next(yaml.safe_load_all((tmp_path / "pipeline.yaml").read_text()))["root"]["inputDefinitions"]["parameters"]
    assert {"loss", "epochs", "data_uri", "base_model", "matryoshka_dims", "overrides"} <= set(form)

    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    # LoRA adapters are not mixed with the base (WiSE-FT, which the local profile uses): wise_alpha back to 1.
    overrides = {"train.lora_r": 4, "train.wise_alpha": 1, "eval.precisions": ["float32", "int8"],
                 "data.column_map": ["question=prompt"]}
    pipeline(loss="cached_mnrl", overrides=overrides)

    run = next((tmp_path / "runs").glob("medical-embedding-finetune-*"))
    info = json.loads((run / "train-model" / "model" / "training_info.json").read_text())
    assert (info["loss"], info["lora_r"]) == ("cached_mnrl", 4)
    results = json.loads((run / "evaluate-models" / "results" / "results.json").read_text())
    assert results["precisions"] == ["float32", "int8"] and results["settings"]["precisions"] == ["float32", "int8"]
    stats = json.loads((run / "prep-data" / "train_data" / "prep_stats.json").read_text())
    assert stats["rows_read"] == len(rows) and stats["train_pairs"] > 0
    resolved = (run / "resolve-config" / "resolved_config").read_text()
    assert "| train.lora_r | **`4`** |" in resolved and "| train.loss | **`\"cached_mnrl\"`** |" in resolved


def test_a_scheduled_run_retrains_on_new_bytes_skips_unchanged_data_and_compares_with_the_champion(
        tmp_path, tiny_model_dir, capsys):
    """Issue 11: the data identity feeds prep (KFP's cache replays prep only on the same bytes); an
    unchanged run trains nothing; a run on changed data trains and scores the current champion."""
    from medembed.registry import ModelRegistry
    from medembed.storage import LocalStore

    data = write_jsonl(tmp_path / "pairs.jsonl", make_rows())
    config = tiny_config(tmp_path, tiny_model_dir, data)
    runs = tmp_path / "runs"

    def task_dirs(outcome, task):
        return list(Path(outcome["run_root"]).glob(f"*/{task}"))

    first = run_local(config, runs)
    assert first["trained"] and first["version"] == 1
    registry = ModelRegistry(LocalStore(tmp_path / "registry"), "medical-embeddings")
    if registry.alias() is None:  # the tiny model may not pass the gate; make v1 the champion by hand
        registry.promote(1, reason="test: a champion to compare with")

    second = run_local(config, runs)
    assert not second["trained"] and "nothing new to train" in second["reason"]
    assert second["model_uri"] == registry.model_uri(1) and second["champion"] == 1
    assert task_dirs(second, "train-model") == [] and task_dirs(second, "register-model") == []
    assert task_dirs(second, "prep-data") == [], "same bytes: prep replayed from the cache, not run"
    assert registry.versions() == [1]

    rows = make_rows()
    rows[0]["answer"] += " Updated guidance from the clinic."
    write_jsonl(data, rows)  # the same URI, new bytes
    third = run_local(config, runs)
    # New bytes: prep and training run again (a task replayed from the cache leaves no folder in its run).
    assert third["trained"] and task_dirs(third, "prep-data") and task_dirs(third, "train-model")
    # The champion was scored on this run's evaluation data, next to the candidate.
    champion = third["results"]["champion"]
    assert champion["version"] == 1 and not champion["error"]
    assert set(champion["deltas"]) == {"64", "32", "16"} and "ndcg@10" in champion["deltas"]["16"]
    assert "| main | 64 | champion v1 |" in third["decision"]
    capsys.readouterr()


def test_a_failed_run_is_recorded_next_to_the_models_and_announced(tmp_path, tiny_model_dir):
    """The exit handler runs whatever failed: a record in the registry and a POST to registry.notify_url."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from medembed.local_run import LocalRunFailed

    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = tiny_config(tmp_path, tiny_model_dir, tmp_path / "missing.jsonl").override(
            {"registry.notify_url": f"http://127.0.0.1:{server.server_port}/hooks/medembed"})
        with pytest.raises(LocalRunFailed, match="data snapshot failed"):
            run_local(config, tmp_path / "runs")
    finally:
        server.shutdown()
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "registry" / "medical-embeddings" / "runs").iterdir()]
    assert record["state"] == "FAILED" and record["model_name"] == "medical-embeddings"
    assert received == [record]


def test_a_base_model_imported_into_s3_trains_without_any_hub(tmp_path, tiny_model_dir, s3_endpoint, monkeypatch):
    """`models import-base` mirrors a model into MinIO; tasks fetch it once into the model cache."""
    from medembed import base_models
    from medembed.models import model_identity, resolve_model_path

    monkeypatch.setenv("MEDEMBED_MODEL_CACHE", str(tmp_path / "cache"))
    uri = "s3://base-models/tiny"
    manifest = base_models.import_base("tiny", uri, folder=tiny_model_dir)
    assert base_models.import_base("tiny", uri, folder=tiny_model_dir) == manifest  # idempotent
    local = Path(resolve_model_path(uri))
    assert local.parent.parent == tmp_path / "cache" and resolve_model_path(uri) == str(local)  # fetched once
    assert model_identity(uri) == f"{uri}@sha256:{manifest['digest']}"

    data = write_jsonl(tmp_path / "pairs.jsonl", make_rows())
    config = tiny_config(tmp_path, tiny_model_dir, data).override({"train.base_model": uri,
                                                                   "data.num_negatives": 0})
    outcome = run_local(config, tmp_path / "runs")
    assert outcome["trained"] and outcome["manifest"]["base_model"] == uri
    assert outcome["manifest"]["base_model_identity"] == model_identity(uri)
