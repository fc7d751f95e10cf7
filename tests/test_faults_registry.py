"""The registry under faults (issue 13): damaged alias entries and champion metrics, the champion
comparison through the registration stage, and `run-local` end to end with an s3:// registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import tiny_overrides
from faultkit import case, observe
from medembed.register import stage as register_stage
from medembed.registry import ModelRegistry, RegistryError
from medembed.storage import LocalStore, open_store
from test_registry import WIN, card, fake_model, promote, results

ROOT = Path(__file__).resolve().parents[1]


def _registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(LocalStore(tmp_path / "reg"), "medical")


@case(fault="an alias log entry that is valid JSON of the wrong shape: {id}",
      promise="reading the alias, rolling back and a promoting registration fail with one RegistryError naming the key "
              "and the way out, before any new version is written")
@pytest.mark.parametrize("entry", ['[1, 2, 3]', '{"action": "promote"}', '{"action": "promote", "version": "2"}', '"champion"'],
                         ids=["a list", "no version", "version as text", "a string"])
def test_an_alias_entry_of_the_wrong_shape_is_named_before_anything_is_written(tmp_path, entry):
    registry = _registry(tmp_path)
    registry.register(fake_model(tmp_path, "m1"), results(WIN), {}, card, promote(None))
    registry.register(fake_model(tmp_path, "m2"), results(WIN), {}, card, promote(1))
    damaged = tmp_path / "reg/medical/aliases/champion/000002.json"
    damaged.write_text(entry)
    expected = rf"^{damaged}: the alias 'champion' log entry 2 is not an entry \(.*\); .*restore it from a backup or delete it"
    with pytest.raises(RegistryError, match=expected) as error:
        registry.alias()
    with pytest.raises(RegistryError, match=expected):
        registry.rollback()
    with pytest.raises(RegistryError, match=expected):
        registry.register(fake_model(tmp_path, "m3"), results(WIN), {}, card, promote(2))
    assert registry.versions() == [1, 2] and not (tmp_path / "reg/medical/v0003").exists()
    damaged.unlink()  # the way out the message gives
    assert registry.alias() == 1
    observe(f"{error.value}")
    observe(f"no v0003 written; after deleting the entry the alias is v{registry.alias()}")


@case(fault="the champion's metrics.json is truncated",
      promise="registration, promotion and rollback still work (they never read it); reading it names the file")
def test_a_truncated_champion_metrics_file_blocks_nothing(tmp_path):
    registry = _registry(tmp_path)
    registry.register(fake_model(tmp_path, "m1"), results(WIN), {}, card, promote(None))
    metrics = tmp_path / "reg/medical/v0001/metrics.json"
    metrics.write_text(metrics.read_text()[:40])
    second = registry.register(fake_model(tmp_path, "m2"), results(WIN), {}, card, promote(1))
    assert second.promoted and registry.alias() == 2
    assert registry.rollback() == 1
    with pytest.raises(RegistryError, match=rf"^{metrics}: the metrics file is not valid JSON .*restore it from a backup or "
                                            r"delete it \(the version stays listed, but its metrics cannot be shown\)") as error:
        registry.metrics(1)
    observe(f"v2 registered and promoted, rollback to v{registry.alias()}; reading it: {error.value}")


@case(fault="a candidate significantly worse than the champion at one dim reaches the registration stage",
      promise="registered, not promoted; the champion stays and the decision names the dim and the champion")
def test_the_champion_comparison_decides_through_the_registration_stage(stage_outputs, tmp_path):
    registry_root = tmp_path / "registry"
    config = stage_outputs["config"].override({"registry.registry_uri": str(registry_root)})
    registry = ModelRegistry(LocalStore(registry_root), config.registry.model_name)
    champion = registry.register(fake_model(tmp_path, "old"), results(WIN), {}, card, promote(None))
    scored = json.loads((stage_outputs["results"] / "results.json").read_text())
    dims = [str(d) for d in scored["dims"]]
    win = {"delta": 0.05, "low": 0.02, "high": 0.08, "excludes_zero": True}
    worse = {"delta": -0.03, "low": -0.05, "high": -0.01, "excludes_zero": True}
    for dim in dims:
        scored["deltas"][dim]["float32"]["ndcg@10"] = win
    scored["champion"] = {"version": champion.version, "error": "",
                          "deltas": {dims[0]: {"ndcg@10": {"delta": 0.0, "low": -0.01, "high": 0.01}}, dims[1]: {"ndcg@10": worse}}}
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "results.json").write_text(json.dumps(scored))
    outcome = register_stage.run(config, stage_outputs["model"], results_dir, stage_outputs["train"])
    assert (outcome["version"], outcome["promoted"], registry.alias()) == (2, False, 1)
    assert f"dim {dims[1]}: ndcg@10 vs the champion v1 -0.0300 [-0.0500, -0.0100]: significantly worse" in outcome["reasons"]
    observe(f"v{outcome['version']} registered, not promoted, champion still v{registry.alias()}: {outcome['reasons']}")


@case(fault="`medembed run-local` with an s3:// registry (the issue: it registered, then failed with FileNotFoundError "
            "'s3:/…/metrics.json' and exit 1, so an operator re-ran and duplicated the version)",
      promise="exit code 0, the model printed as its s3:// URI, one complete version in the bucket")
def test_run_local_with_an_s3_registry_works_end_to_end(s3_endpoint, tmp_path, tiny_model_dir):
    from conftest import make_rows, write_jsonl

    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    data = write_jsonl(tmp_path / "pairs.jsonl", make_rows())
    sets = tiny_overrides(tiny_model_dir, data, **{"registry.registry_uri": f"s3://{bucket}/models"})
    argv = [sys.executable, "-m", "medembed", "run-local", "--runs-dir", str(tmp_path / "runs")]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    assert last == f"model: s3://{bucket}/models/medical-embeddings/v0001/model", last
    registry = ModelRegistry(open_store(f"s3://{bucket}/models", create=False), "medical-embeddings")
    assert registry.versions() == [1]
    assert registry.manifest(1)["version"] == 1 and "deltas" in registry.metrics(1)
    decision = next(line for line in run.stdout.splitlines() if line.startswith("v1: "))
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
    observe(f"exit code 0; '{decision}'; last line '{last}'; versions in the bucket: {registry.versions()}")
