"""`medembed models ...` (medembed/cli/models.py) through the CLI's own entry point, on a registry made by the
real registration stage (gate, manifest, model card) from results made by the real evaluation summary code:

    v1  promoted (no champion yet)                       evaluation data A
    v2  refused: significantly worse than v1 at dim 32    evaluation data A, v1 scored beside it
    v3  promoted over v1                                  evaluation data B (new data), v1 scored beside it

so champion -> v3, with v1 before it. Models carry the prompts 'query: ' / 'passage: ' as a trained e5
model does. Local folder and a live S3 endpoint (moto on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medembed import cli
from medembed.artifacts import RESULTS_FILE, STATS_FILE, TrainingInfo
from medembed.config import EvalConfig, load_config
from medembed.evaluate.evaluator import summarize
from medembed.evaluate.metrics import per_query_metrics
from medembed.register import stage as register_stage
from medembed.registry import ModelRegistry
from medembed.storage import LocalStore

ROOT = Path(__file__).resolve().parents[1]
NAME = "medical-embeddings"
DIMS = [64, 32]
PROMPTS = {"query": "query: ", "document": "passage: "}
N_QUERIES = 60


def _scores(ranks: list[int]) -> dict:
    """Per-query metrics when query i's one relevant passage is ranked ranks[i] (1 = first)."""
    ranked = [[f"other{j}" for j in range(rank - 1)] + ["relevant"] for rank in ranks]
    return per_query_metrics(ranked, [{"relevant": 1}] * len(ranks))


def _ranks(first: int, rest: int) -> list[int]:
    """`first` queries with their passage ranked first, the others ranked `rest`."""
    return [1] * first + [rest] * (N_QUERIES - first)


def _results(model_ranks: dict[str, dict[int, list[int]]], fingerprint: str, champion_version: int | None = None) -> dict:
    """results.json as the evaluation stage writes it (evaluator.summarize plus the keys evaluate adds)."""
    per_query = {label: {str(d): {"float32": _scores(ranks[d])} for d in ranks} for label, ranks in model_ranks.items()}
    latency = {label: {str(d): {"float32": 0.1} for d in DIMS} for label in model_ranks if label != "champion"}
    summary = summarize(per_query, latency, DIMS, ("float32",), 200, EvalConfig(bootstrap_samples=300))
    results = {"dims": DIMS, "base_model": "tiny", "n_queries": N_QUERIES, "n_corpus": 200,
               "eval_fingerprint": fingerprint, **summary}
    if champion_version is not None:
        results["champion"] = {"version": champion_version, "error": "", "deltas": {}, **summary.get("champion", {})}
    return json.loads(json.dumps(results))


BASE = {64: _ranks(20, 5), 32: _ranks(18, 6)}
V1 = {64: _ranks(45, 3), 32: _ranks(44, 3)}
V2 = {64: _ranks(45, 3), 32: _ranks(30, 3)}  # better than base, clearly worse than v1 at dim 32
V3 = {64: _ranks(55, 2), 32: _ranks(54, 2)}


def _model(tiny_model_dir: Path, folder: Path, seed: int) -> Path:
    """The tiny model with stored prompts and its own weights, plus the training record."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    model.prompts = dict(PROMPTS)
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    model.save(str(folder))
    TrainingInfo(model_dir=str(folder), base_model=str(tiny_model_dir), matryoshka_dims=DIMS,
                 query_prompt=PROMPTS["query"], passage_prompt=PROMPTS["document"], train_pairs=36, steps=4,
                 epochs=1, train_loss=1.0, train_seconds=0.5, device="cpu", bf16=False, max_seq_length=64).write(folder)
    return folder


def _register(work: Path, registry_uri: str, tiny_model_dir: Path, n: int, results: dict, data: str) -> dict:
    config = load_config("local", {"registry.registry_uri": registry_uri, "train.base_model": str(tiny_model_dir),
                                   "train.matryoshka_dims": "64,32"})
    model_dir = _model(tiny_model_dir, work / f"model{n}", seed=n)
    results_dir, train_dir = work / f"results{n}", work / f"train{n}"
    results_dir.mkdir()
    train_dir.mkdir()
    (results_dir / RESULTS_FILE).write_text(json.dumps(results))
    (train_dir / STATS_FILE).write_text(json.dumps({"source": f"s3://medembed-data/{data}.jsonl", "fingerprint": data * 8}))
    return register_stage.run(config, model_dir, results_dir, train_dir, pipeline_run=f"nightly-{n}")


@pytest.fixture(scope="module")
def built_registry(tmp_path_factory, tiny_model_dir) -> Path:
    work = tmp_path_factory.mktemp("models-cli")
    root = work / "registry"
    first = _register(work, str(root), tiny_model_dir, 1, _results({"base": BASE, "finetuned": V1}, "evalA" * 8), "a")
    second = _register(work, str(root), tiny_model_dir, 2,
                       _results({"base": BASE, "finetuned": V2, "champion": V1}, "evalA" * 8, 1), "a")
    third = _register(work, str(root), tiny_model_dir, 3,
                      _results({"base": BASE, "finetuned": V3, "champion": V1}, "evalB" * 8, 1), "b")
    assert [(r["version"], r["promoted"]) for r in (first, second, third)] == [(1, True), (2, False), (3, True)]
    return root


@pytest.fixture
def registry(built_registry, tmp_path) -> Path:
    """A private copy: commands that change aliases do not leak into other tests."""
    copy = tmp_path / "registry"
    shutil.copytree(built_registry, copy)
    return copy


def _models(capsys, registry: Path | str, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["models", *argv, "--set", f"registry.registry_uri={registry}"])
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, registry, *argv):
    code, out, err = _models(capsys, registry, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


# ---------------------------------------------------------------- list, show


def test_list_shows_every_version_its_aliases_and_the_gate_outcome(registry, capsys):
    code, out, err = _models(capsys, registry, "list")
    assert (code, err) == (0, "")
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert set(rows) == {"1", "2", "3"}
    assert "champion" in rows["3"] and "promoted" in rows["3"]
    assert "refused" in rows["2"] and "champion" not in rows["2"]
    assert "aliases: champion -> v3" in out
    listing = _json(capsys, registry, "list")
    assert [v["version"] for v in listing["versions"]] == [1, 2, 3]
    assert listing["aliases"] == {"champion": 3}
    assert [v["gate"]["promote"] for v in listing["versions"]] == [True, False, True]
    metrics = json.loads((registry / NAME / "v0003" / "metrics.json").read_text())
    top = listing["versions"][2]["evaluation"]["dims"][0]
    assert top["dim"] == 64 and top["finetuned"] == round(metrics["finetuned"]["64"]["ndcg@10"], 4)
    assert f"{top['finetuned']:.4f}" in rows["3"]


def test_show_has_metrics_per_dim_the_gate_lineage_and_the_index_contract(registry, capsys):
    code, out, err = _models(capsys, registry, "show", NAME)  # the champion
    assert (code, err) == (0, "")
    assert out.startswith(f"{NAME} v3  (champion)")
    metrics = json.loads((registry / NAME / "v0003" / "metrics.json").read_text())
    for dim in DIMS:
        base, tuned = metrics["base"][str(dim)]["ndcg@10"], metrics["finetuned"][str(dim)]["ndcg@10"]
        delta = metrics["deltas"][str(dim)]["float32"]["ndcg@10"]
        row = next(line for line in out.splitlines() if line.split()[:1] == [str(dim)] and f"{base:.4f}" in line)
        assert f"{tuned:.4f}" in row and f"{delta['delta']:+.4f} [{delta['low']:+.4f}, {delta['high']:+.4f}]" in row
        vs_champion = metrics["champion"]["deltas"][str(dim)]["ndcg@10"]
        assert f"{vs_champion['delta']:+.4f} [{vs_champion['low']:+.4f}, {vs_champion['high']:+.4f}]" in row
    assert "champion v1" in out
    assert "Gate: promoted (gated dims 64, 32; compared with champion v1)" in out
    assert "query prompt         'query: '" in out and "passage prompt       'passage: '" in out
    assert "64, 32" in out and "re-normalise after truncating" in out and "cosine" in out
    assert "s3://medembed-data/b.jsonl  (prepared data bbbbbbbb)" in out  # lineage: data source, fingerprint

    shown = _json(capsys, registry, "show", f"{NAME}:2")
    assert shown["version"] == 2 and shown["aliases"] == []
    assert shown["gate"]["promote"] is False
    assert shown["gate"]["reasons"][0].startswith("dim 32: ndcg@10 vs the champion v1")
    assert "significantly worse" in shown["gate"]["reasons"][0]
    failed = [c for c in shown["gate"]["checks"] if not c["passed"]]
    assert [(c["dim"], c["against"]) for c in failed] == [(32, "champion v1")]
    assert shown["index_contract"] == {"query_prompt": "query: ", "passage_prompt": "passage: ", "dims": [64, 32],
                                       "normalize_after_truncation": True, "similarity": "cosine", "max_seq_length": 64}
    assert shown["lineage"]["data_fingerprint"] == "a" * 8 and shown["lineage"]["eval_fingerprint"] == "evalA" * 8
    row32 = next(r for r in shown["evaluation"]["dims"] if r["dim"] == 32)
    assert row32["vs_champion"]["version"] == 1 and row32["vs_champion"]["high"] < 0
    assert _json(capsys, registry, "show", f"{NAME}@champion")["version"] == 3
    assert _json(capsys, registry, "show", f"{NAME}:v1")["version"] == 1


# ---------------------------------------------------------------- pull


def test_pull_gives_a_folder_that_plain_sentence_transformers_loads_with_its_prompts(registry, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    target = tmp_path / "model"
    code, out, err = _models(capsys, registry, "pull", f"{NAME}@champion", "--to", str(target))
    assert (code, err) == (0, "")
    manifest = json.loads((registry / NAME / "v0003" / "manifest.json").read_text())
    assert f"{NAME} v3 ({NAME}@champion) -> {target}: {len(manifest['files'])} files, SHA-256 verified" in out
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == sorted(
        name.removeprefix("model/") for name in manifest["files"])

    model = SentenceTransformer(str(target), device="cpu")
    texts = ["What are the symptoms of gout ?", "What causes rickets ?"]
    assert model.prompts["query"] == "query: " and model.prompts["document"] == "passage: "
    queries = model.encode_query(texts)
    documents = model.encode_document(texts)
    np.testing.assert_allclose(queries, model.encode(["query: " + t for t in texts]), atol=1e-5)
    np.testing.assert_allclose(documents, model.encode(["passage: " + t for t in texts]), atol=1e-5)
    assert not np.allclose(queries, model.encode(texts), atol=1e-3), "the prompt changes the embedding"
    # It is v3's weights, not another version's.
    v1 = SentenceTransformer(str(registry / NAME / "v0001" / "model"), device="cpu")
    assert not np.allclose(queries, v1.encode_query(texts), atol=1e-4)

    info = _json(capsys, registry, "pull", f"{NAME}:1", "--to", str(tmp_path / "v1"))
    assert info["version"] == 1 and info["verified"] is True and info["files"] == len(manifest["files"])


def test_pull_refuses_a_corrupt_file_and_leaves_nothing_behind(registry, tmp_path, capsys):
    weights = registry / NAME / "v0003" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    target = tmp_path / "model"
    code, out, err = _models(capsys, registry, "pull", NAME, "--to", str(target))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "model.safetensors: checksum mismatch" in err
    assert not target.exists() and list(tmp_path.glob(".model-*")) == []


def test_pull_into_a_folder_with_files_is_refused(registry, tmp_path, capsys):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    code, _, err = _models(capsys, registry, "pull", NAME, "--to", str(target))
    assert code == 1 and "not empty" in err and (target / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------- promote, rollback


def test_promote_and_rollback_move_the_alias_and_keep_its_history(registry, capsys):
    code, out, err = _models(capsys, registry, "promote", f"{NAME}:2")
    assert code == 0 and out == f"{NAME}@champion: v3 -> v2\n"
    assert err.startswith("note: v2 did not pass the promotion gate (dim 32: ndcg@10 vs the champion v1")
    reg = ModelRegistry(LocalStore(registry), NAME)
    assert reg.alias() == 2
    code, out, _ = _models(capsys, registry, "promote", f"{NAME}:2")
    assert code == 0 and "already points at v2; nothing changed" in out
    assert len(reg.alias_state().history) == 3, "a no-op promotion writes nothing"

    assert _json(capsys, registry, "rollback", NAME) == {"model": NAME, "alias": "champion", "version": 3, "previous": 2}
    code, out, _ = _models(capsys, registry, "rollback", NAME)
    assert code == 0 and out == f"{NAME}@champion: v3 -> v1 (rolled back)\n"
    code, out, err = _models(capsys, registry, "rollback", NAME)
    assert code == 1 and out == "" and err.count("\n") == 1 and "no earlier version to roll back to" in err
    history = reg.alias_state().history
    assert [(e["action"], e["version"]) for e in history] == [
        ("promote", 1), ("promote", 3), ("promote", 2), ("rollback", 3), ("rollback", 1)]
    assert history[2]["reason"].startswith("medembed models promote (")

    # Any alias, not only the champion.
    assert _json(capsys, registry, "promote", f"{NAME}:3", "--alias", "staging")["previous"] is None
    assert _json(capsys, registry, "list")["aliases"] == {"champion": 1, "staging": 3}
    assert _json(capsys, registry, "show", f"{NAME}@staging")["aliases"] == ["staging"]


# ---------------------------------------------------------------- diff


def test_diff_on_the_same_evaluation_data_uses_the_paired_interval_measured_in_the_run(registry, capsys):
    diff = _json(capsys, registry, "diff", f"{NAME}:1", f"{NAME}:2")
    assert diff["same_eval_data"] is True and diff["warnings"] == []
    v2 = json.loads((registry / NAME / "v0002" / "metrics.json").read_text())
    for row in diff["dims"]:
        measured = v2["champion"]["deltas"][str(row["dim"])]["ndcg@10"]  # v2 - v1, scored in v2's run
        assert row["paired"] == {"delta": round(measured["delta"], 4), "low": round(measured["low"], 4),
                                 "high": round(measured["high"], 4), "measured_in": "v2"}
        assert row["b_minus_a"] == round(row["b"] - row["a"], 4)
    # Turned around, the same measurement with its sign and bounds swapped.
    back = _json(capsys, registry, "diff", f"{NAME}:2", f"{NAME}:1")
    assert [(r["paired"]["delta"], r["paired"]["low"]) for r in back["dims"]] == [
        (-r["paired"]["delta"], -r["paired"]["high"]) for r in diff["dims"]]
    code, out, err = _models(capsys, registry, "diff", f"{NAME}:1", f"{NAME}:2")
    assert (code, err) == (0, "")
    assert "(run of v2)" in out and "prepared data" in out and "same" in out


def test_diff_warns_when_the_two_were_scored_on_different_evaluation_data(registry, capsys):
    code, out, err = _models(capsys, registry, "diff", f"{NAME}:1", f"{NAME}@champion")
    assert code == 0
    assert err.startswith(f"warning: {NAME} v1 and {NAME} v3 were scored on different evaluation data") and \
        err.count("\n") == 1
    assert "WARNING: different evaluation data" in out
    lineage = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lineage["evaluation"].rstrip().endswith("differs")
    diff = _json(capsys, registry, "diff", f"{NAME}:1", f"{NAME}:3")
    assert diff["same_eval_data"] is False and all(row["paired"] is None for row in diff["dims"])
    assert diff["lineage"]["data_fingerprint"]["same"] is False
    assert diff["lineage"]["base_model_identity"]["same"] is True


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("argv, code, message", [
    (["show", "nope"], 1, f"no model named 'nope' in the registry {{registry}}; models there: {NAME}"),
    (["show", f"{NAME}:9"], 1, f"{NAME}: no complete version 9; complete versions: 1, 2, 3"),
    (["pull", f"{NAME}@staging", "--to", "x"], 1, f"{NAME}: alias 'staging' points at no version (aliases: champion -> v3)"),
    (["show", f"{NAME}@"], 2, f"'{NAME}@' is not a model reference: use NAME, NAME@ALIAS or NAME:N"),
    (["promote", NAME], 2, f"models promote {NAME}: name the version to promote, e.g. {NAME}:3"),
    (["promote", f"{NAME}:1", "--alias", "../x"], 2, "--alias '../x': use letters"),
    (["list", "--set", "eval.tolerance=5"], 2, "eval.tolerance"),
])
def test_errors_are_one_line_on_stderr_with_an_exit_code(registry, capsys, argv, code, message):
    got, out, err = _models(capsys, registry, *argv)
    assert got == code and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message.format(registry=registry) in err


def test_a_damaged_registry_file_is_named_with_the_way_out(registry, capsys):
    (registry / NAME / "aliases" / "champion" / "000002.json").write_text('{"action": "prom')
    code, out, err = _models(capsys, registry, "show", NAME)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "aliases/champion/000002.json: the alias 'champion' log entry 2 is not valid JSON" in err
    assert "restore it from a backup or delete it" in err
    # A damaged manifest hides only its own version from the list, and the exit code says so.
    (registry / NAME / "aliases" / "champion" / "000002.json").unlink()
    (registry / NAME / "v0002" / "manifest.json").write_text("{")
    code, out, err = _models(capsys, registry, "list")
    assert code == 1 and "v0002/manifest.json: the manifest is not valid JSON" in err
    assert [line.split()[:4] for line in out.splitlines() if line.strip()[:1].isdigit()][1] == ["2", "-", "-", "damaged"]


# ---------------------------------------------------------------- S3 / MinIO


def test_the_same_commands_on_an_s3_registry(built_registry, s3_endpoint, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    from medembed.storage import open_store

    store = open_store("s3://models-cli/models")
    store.upload_dir(built_registry / NAME, NAME)
    uri = "s3://models-cli/models"
    listing = _json(capsys, uri, "list")
    assert [v["version"] for v in listing["versions"]] == [1, 2, 3] and listing["aliases"] == {"champion": 3}
    assert listing["versions"][2]["uri"] == f"{uri}/{NAME}/v0003/model"
    pulled = _json(capsys, uri, "pull", f"{NAME}@champion", "--to", str(tmp_path / "model"))
    assert pulled["version"] == 3
    assert SentenceTransformer(pulled["path"], device="cpu").prompts["query"] == "query: "
    assert _json(capsys, uri, "promote", f"{NAME}:1") == {"model": NAME, "alias": "champion", "version": 1,
                                                          "previous": 3, "changed": True}
    assert ModelRegistry(open_store(uri, create=False), NAME).alias() == 1
    # A bucket that does not exist is not created by reading it.
    code, _, err = _models(capsys, "s3://no-such-bucket/models", "list")
    assert code == 5 and "bucket 'no-such-bucket' does not exist" in err
    from medembed.storage import connect

    assert not connect().bucket_exists("no-such-bucket")


def test_unreachable_store_is_one_line_and_exit_5_from_the_console_script(tmp_path):
    """As a user runs it: no retry warnings, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "AWS_", "MEDEMBED_S3_"))}
    env.update(PYTHONPATH=str(ROOT), MINIO_ENDPOINT="http://127.0.0.1:9", MINIO_ACCESS_KEY="k", MINIO_SECRET_KEY="s",
               MINIO_SECURE="false", HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "medembed", "models", "list", "--profile", "cluster"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 5 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: cannot list s3://medembed-registry/models/medical-embeddings/ at "
                                    "http://127.0.0.1:9: cannot connect")


def test_import_base_mirrors_a_model_once_and_refuses_another_at_the_same_uri(tmp_path, tiny_model_dir, capsys):
    uri = str(tmp_path / "base-models" / "tiny")
    code, out, err = _models(capsys, tmp_path / "registry", "import-base", str(tiny_model_dir), uri, "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["files"] == len([p for p in Path(tiny_model_dir).rglob("*") if p.is_file()])
    assert json.loads(_models(capsys, tmp_path / "registry", "import-base", str(tiny_model_dir), uri, "--json")[1]) == first
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    (other / "README.md").write_text("another model")
    code, out, err = _models(capsys, tmp_path / "registry", "import-base", str(other), uri)
    assert code == 1 and err.count("\n") == 1 and "already holds another model" in err
