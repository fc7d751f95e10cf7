"""The whole pipeline through kfp.local on a tiny random model: every stage's real code path."""

import json

import pytest

from conftest import make_rows, write_jsonl
from medembed import stages
from medembed.cli import run_local
from medembed.config import load_config
from medembed.data import DataError


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


def test_pipeline_runs_end_to_end_and_registers(tmp_path, tiny_model_dir, pairs_file):
    from sentence_transformers import SentenceTransformer

    outcome = run_local(tiny_config(tmp_path, tiny_model_dir, pairs_file), tmp_path / "runs")

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

    # The local run keeps its artifacts, and its config, for inspection.
    run_root = tmp_path / "runs"
    assert json.loads(next(run_root.glob("*/config.json")).read_text())["profile"] == "local"


def test_bad_input_fails_in_prep_and_registers_nothing(tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, tmp_path / "missing.jsonl")
    with pytest.raises(RuntimeError):
        run_local(config, tmp_path / "runs")
    assert not (tmp_path / "registry").exists() or not any((tmp_path / "registry").rglob("manifest.json"))
    train_dirs = list((tmp_path / "runs").rglob("train-model"))
    assert train_dirs == [], "training must not start after prep failed"


def _prep(tmp_path, path, **overrides):
    config = load_config("local", {"data.data_uri": str(path), "data.min_train_pairs": 4, **overrides}).data
    return stages.prep(config, tmp_path / "train", tmp_path / "eval")


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


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="input file not found: .*nowhere.jsonl"):
        _prep(tmp_path, tmp_path / "nowhere.jsonl")


def test_split_keeps_every_group_on_one_side(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", make_rows())
    stats = _prep(tmp_path, path, **{"data.test_fraction": 0.25, "data.dev_fraction": 0.1})
    assert stats.groups_crossing_splits == 0
    train_queries = {json.loads(l)["anchor"] for l in (tmp_path / "train/train.jsonl").read_text().splitlines()}
    eval_queries = {json.loads(l)["text"] for l in (tmp_path / "eval/queries.jsonl").read_text().splitlines()}
    topic = lambda q: q.rstrip(" ?").split()[-1]
    assert not {topic(q) for q in train_queries} & {topic(q) for q in eval_queries}
