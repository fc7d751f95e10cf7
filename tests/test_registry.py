"""The registry (local folder and a live S3 endpoint) and the promotion gate.

Concurrency: 8 registrations and 8 promotions at once, in threads that each open their own client,
against both backends; interrupted uploads; corruption caught by checksums; rollback history."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from faultkit import case, observe
from medembed.config import RegistryConfig
from medembed.register.gate import GateDecision, decide_promotion, decision_markdown
from medembed.registry import CHAMPION, ModelRegistry, RegistryError
from medembed.storage import LocalStore, StorageError, open_store

WORKERS = 8


def delta(d: float, low: float, high: float) -> dict:
    return {"delta": d, "low": low, "high": high, "excludes_zero": low > 0 or high < 0}


def results(vs_base: dict[int, tuple], champion: dict[int, tuple] | None = None, champion_version: int = 1,
            guards: dict[str, dict[int, tuple]] | None = None) -> dict:
    """Evaluation results as the evaluation stage writes them: deltas with intervals per dim."""
    dims = sorted(vs_base, reverse=True)

    def per_dim(values):
        return {str(d): {"float32": {"ndcg@10": delta(*values[d])}} for d in values}

    out = {"dims": dims, "eval_fingerprint": "eval-1", "deltas": per_dim(vs_base),
           "base": {str(d): {"ndcg@10": 0.5} for d in dims},
           "finetuned": {str(d): {"ndcg@10": 0.5 + vs_base[d][0]} for d in dims}}
    if champion is not None:
        out["champion"] = {"version": champion_version, "error": "",
                           "deltas": {str(d): {"ndcg@10": delta(*champion[d])} for d in champion}}
    if guards:
        out["collections"] = {name: {"dims": dims, "deltas": per_dim(values)} for name, values in guards.items()}
    return out


WIN = {256: (0.05, 0.02, 0.08), 64: (0.06, 0.03, 0.09)}


def fake_model(tmp_path, name="model", payload: bytes | None = None):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").write_bytes(payload if payload is not None else name.encode() * 256)
    return folder


def card(version):
    return f"card v{version}"


def promote(champion_version=None) -> GateDecision:
    return GateDecision(promote=True, champion_version=champion_version)


def refuse(reason="worse") -> GateDecision:
    return GateDecision(promote=False, reasons=[reason])


# ---------------------------------------------------------------- the gate


def test_gate_requires_the_interval_vs_base_above_the_minimum_gain_at_every_gated_dim():
    assert decide_promotion(results(WIN), RegistryConfig()).promote
    unsure = results({256: (0.05, 0.02, 0.08), 64: (0.01, -0.01, 0.03)})
    decision = decide_promotion(unsure, RegistryConfig())
    assert not decision.promote and decision.reasons[0].startswith("dim 64:") and "lower end" in decision.reasons[0]
    # Gating only the dims an index uses.
    assert decide_promotion(unsure, RegistryConfig(gate_dims=(256,))).promote
    assert not decide_promotion(results(WIN), RegistryConfig(min_ndcg_gain=0.025)).promote


def test_gate_refuses_a_candidate_significantly_worse_than_the_champion_at_one_dim():
    tied = results(WIN, champion={256: (0.0, -0.01, 0.01), 64: (0.0, -0.02, 0.02)})
    assert decide_promotion(tied, RegistryConfig()).promote
    worse = results(WIN, champion={256: (0.0, -0.01, 0.01), 64: (-0.02, -0.03, -0.005)}, champion_version=4)
    decision = decide_promotion(worse, RegistryConfig())
    assert not decision.promote and decision.champion_version == 4
    assert decision.reasons == ["dim 64: ndcg@10 vs the champion v4 -0.0200 [-0.0300, -0.0050]: significantly worse"]
    assert "| main | 64 | champion v4 |" in decision_markdown(decision)


def test_gate_refuses_a_regression_on_a_guard_collection():
    """The issue-10 case: a gain on the template split cannot hide a loss on real users' questions."""
    regress = results(WIN, guards={"consumer-questions": {256: (0.01, -0.01, 0.03), 64: (-0.04, -0.07, -0.01)}})
    decision = decide_promotion(regress, RegistryConfig())
    assert not decision.promote
    assert decision.reasons == ["guard collection 'consumer-questions', dim 64: ndcg@10 vs base -0.0400 "
                                "[-0.0700, -0.0100]: significantly worse"]
    fine = results(WIN, guards={"consumer-questions": {256: (0.01, -0.01, 0.03), 64: (-0.01, -0.03, 0.01)}})
    assert decide_promotion(fine, RegistryConfig()).promote


def test_gate_never_promotes_over_a_champion_it_could_not_score():
    unscored = results(WIN)
    unscored["champion"] = {"version": 2, "error": "checksum mismatch", "deltas": {}}
    decision = decide_promotion(unscored, RegistryConfig())
    assert not decision.promote and "could not be scored" in decision.reasons[0]


# ---------------------------------------------------------------- versions and aliases


def exercise_registry(registry: ModelRegistry, tmp_path):
    first = registry.register(fake_model(tmp_path, "m1"), results(WIN), {"base_model": "b"}, card, promote(None))
    assert (first.version, first.promoted) == (1, True)
    assert registry.alias(CHAMPION) == 1

    loser = registry.register(fake_model(tmp_path, "m2"), results(WIN), {"base_model": "b"}, card, refuse())
    assert (loser.version, loser.promoted) == (2, False)
    assert registry.alias(CHAMPION) == 1, "a refused model must not move the champion"
    assert registry.manifest(2)["gate"]["promote"] is False
    assert registry.store.get_bytes("medical/v0002/model/README.md") == b"card v2"

    winner = registry.register(fake_model(tmp_path, "m3"), results(WIN), {"base_model": "b"}, card, promote(1))
    assert winner.promoted and registry.alias(CHAMPION) == 3
    assert registry.versions() == [1, 2, 3]
    assert registry.metrics(3)["deltas"]["256"]["float32"]["ndcg@10"]["delta"] == 0.05
    return first, winner


def test_local_registry_versions_gate_and_rollback(tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path / "reg"), "medical")
    first, _ = exercise_registry(registry, tmp_path)
    assert (tmp_path / "reg/medical/v0001/model/weights.bin").read_bytes() == b"m1" * 256
    assert first.model_uri == str(tmp_path / "reg/medical/v0001/model")


@case(fault='two rollbacks from v3 (the issue: the second re-promoted v3)',
      promise='v3 → v2 → v1, a third is refused; the log keeps every change')
def test_rollback_walks_back_and_never_toggles(tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path / "reg"), "medical")
    for n in (1, 2, 3):
        registry.register(fake_model(tmp_path, f"m{n}"), results(WIN), {}, card, promote(n - 1 if n > 1 else None))
    assert registry.alias() == 3
    assert registry.rollback() == 2
    assert registry.rollback() == 1, "a second rollback goes further back, it does not return to v3"
    with pytest.raises(RegistryError, match="no earlier version") as error:
        registry.rollback()
    state = registry.alias_state()
    assert [e["action"] for e in state.history] == ["promote"] * 3 + ["rollback"] * 2
    assert [e["version"] for e in state.history] == [1, 2, 3, 2, 1]
    observe(f"alias history {[e['version'] for e in state.history]}; a third rollback: {error.value}")


def test_identical_weights_are_never_registered_twice(tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path / "reg"), "medical")
    registry.register(fake_model(tmp_path, "a", b"same"), results(WIN), {}, card, promote(None))
    again = registry.register(fake_model(tmp_path, "b", b"same"), results(WIN), {}, card, promote(1))
    assert again.duplicate_of == 1 and again.version == 1 and not again.promoted
    assert registry.versions() == [1]


def test_promotion_is_a_compare_and_swap_against_the_champion_it_was_judged_against(tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path / "reg"), "medical")
    registry.register(fake_model(tmp_path, "m1"), results(WIN), {}, card, promote(None))
    registry.register(fake_model(tmp_path, "m2"), results(WIN), {}, card, promote(1))
    # Judged against v1, but v2 became champion meanwhile: registered, not promoted, and said why.
    late = registry.register(fake_model(tmp_path, "m3"), results(WIN), {}, card, promote(1))
    assert (late.version, late.promoted, registry.alias()) == (3, False, 2)
    assert "champion changed to v2" in late.reasons[-1]


@case(fault='the manifest write of a registration fails (ENOSPC raised by the store)',
      promise='the version is never listed, its model files are removed, its number never reused')
def test_an_interrupted_upload_is_never_listed_and_its_number_never_reused(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "reg")
    registry = ModelRegistry(store, "medical")
    real_put = store.put_bytes

    def full_disk(key, data):
        if key.endswith("manifest.json"):
            raise OSError(28, "No space left on device")
        return real_put(key, data)

    monkeypatch.setattr(store, "put_bytes", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        registry.register(fake_model(tmp_path, "m1"), results(WIN), {}, card, promote(None))
    monkeypatch.setattr(store, "put_bytes", real_put)
    assert registry.versions() == [] and registry.alias() is None
    assert not (tmp_path / "reg/medical/v0001/model").exists(), "the partial upload is cleaned up"
    second = registry.register(fake_model(tmp_path, "m2"), results(WIN), {}, card, promote(None))
    assert second.version == 2 and registry.versions() == [2]
    observe(f"versions after the failure: none; next registration v{second.version}")


@case(fault='a registered model file overwritten in the registry',
      promise='pull names the file and the checksum mismatch; nothing half-pulled is left')
def test_pull_verifies_every_file_and_detects_corruption(tmp_path):
    from sentence_transformers import SentenceTransformer  # noqa: F401  (pull hands over a plain folder)

    store = LocalStore(tmp_path / "reg")
    registry = ModelRegistry(store, "medical")
    registry.register(fake_model(tmp_path, "m1"), results(WIN), {}, card, promote(None))
    pulled = registry.pull(registry.resolve("champion"), tmp_path / "pulled")
    assert (pulled / "weights.bin").read_bytes() == b"m1" * 256 and (pulled / "README.md").read_text() == "card v1"
    (tmp_path / "reg/medical/v0001/model/weights.bin").write_bytes(b"m1" * 255 + b"XX")
    with pytest.raises(RegistryError, match=r"v0001/model/weights.bin: checksum mismatch .* corrupt") as error:
        registry.pull(1, tmp_path / "again")
    assert not (tmp_path / "again").exists(), "nothing half-pulled is left behind"
    observe(str(error.value))


@case(fault='a truncated registry file: {id}',
      promise="one RegistryError naming the file, 'not valid JSON', and the way out (no bare JSONDecodeError)")
@pytest.mark.parametrize("damaged", ["aliases/champion/000001.json", "v0001/manifest.json"])
def test_a_damaged_registry_file_is_named_with_a_way_out(tmp_path, damaged):
    store = LocalStore(tmp_path / "reg")
    registry = ModelRegistry(store, "medical")
    registry.register(fake_model(tmp_path, "m1"), results(WIN), {}, card, promote(None))
    (tmp_path / "reg/medical" / damaged).write_text('{"version": 1, "hist')
    with pytest.raises(RegistryError, match="is not valid JSON") as caught:
        registry.alias() if "aliases" in damaged else registry.manifest(1)
    message = str(caught.value)
    assert str(tmp_path / "reg/medical" / damaged) in message and "not valid JSON" in message
    assert "restore it from a backup or delete it" in message
    observe(message)


def test_alias_to_missing_version_is_refused(tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path / "reg"), "medical")
    with pytest.raises(StorageError, match="no complete version 7"):
        registry.promote(7)
    with pytest.raises(StorageError, match="no earlier version"):
        registry.rollback()


def test_bad_model_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="model name"):
        ModelRegistry(LocalStore(tmp_path), "../escape")


# ---------------------------------------------------------------- concurrency, both backends


def _in_threads(count: int, work) -> list:
    """Run work(i) in `count` threads released together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    outcomes: list = [None] * count

    def runner(i):
        barrier.wait()
        try:
            outcomes[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcomes[i] = exc

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        raise failures[0]
    return outcomes


@pytest.fixture(params=["local", "s3"])
def registry_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "reg")
    request.getfixturevalue("s3_endpoint")
    return f"s3://reg-{uuid.uuid4().hex[:12]}/models"


@case(fault='8 registrations at once on a {id} registry, each with its own client',
      promise='8 distinct complete versions, each holding the weights of the run that claimed it')
def test_concurrent_registrations_get_distinct_complete_versions(registry_uri, tmp_path):
    models = [fake_model(tmp_path, f"model{i}") for i in range(WORKERS)]
    open_store(registry_uri)  # the bucket, once

    def register(i):
        # Each writer with its own client, as separate pipeline runs would be.
        registry = ModelRegistry(open_store(registry_uri), "medical")
        return registry.register(models[i], results(WIN), {"run": i}, card, refuse())

    registrations = _in_threads(WORKERS, register)
    versions = sorted(r.version for r in registrations)
    assert versions == list(range(1, WORKERS + 1))
    registry = ModelRegistry(open_store(registry_uri), "medical")
    assert registry.versions() == versions
    for r in registrations:  # nothing overwritten: each version holds the weights of the run that claimed it
        run = registry.manifest(r.version)["run"]
        pulled = registry.pull(r.version, tmp_path / f"pulled{r.version}")
        assert (pulled / "weights.bin").read_bytes() == f"model{run}".encode() * 256
    observe(f"versions {versions}; every pull verified and holds its own run's weights")


@case(fault='8 promotions at once on a {id} registry',
      promise='one alias; its log holds all 8 in one chain, no lost update')
def test_concurrent_promotions_leave_one_alias_whose_history_holds_them_all(registry_uri, tmp_path):
    registry = ModelRegistry(open_store(registry_uri), "medical")
    for i in range(WORKERS):
        registry.register(fake_model(tmp_path, f"m{i}"), results(WIN), {}, card, refuse())

    def promote_one(i):
        return ModelRegistry(open_store(registry_uri), "medical").promote(i + 1, reason=f"writer {i}")

    assert all(_in_threads(WORKERS, promote_one))
    state = ModelRegistry(open_store(registry_uri), "medical").alias_state()
    assert sorted(e["version"] for e in state.history) == list(range(1, WORKERS + 1))
    assert [e["seq"] for e in state.history] == list(range(1, WORKERS + 1))
    assert state.version == state.history[-1]["version"]
    # Each entry names the version it replaced: the log is one chain, no lost update.
    assert [e["previous"] for e in state.history[1:]] == [e["version"] for e in state.history[:-1]]
    observe(f"log {[e['version'] for e in state.history]}, alias v{state.version}")


def test_s3_registry_against_live_endpoint(s3_endpoint, tmp_path):
    store = open_store("s3://registry-test/models")
    registry = ModelRegistry(store, "medical")
    first, winner = exercise_registry(registry, tmp_path)
    assert first.model_uri == "s3://registry-test/models/medical/v0001/model"
    from medembed.storage import connect

    client = connect()
    names = {o.object_name for o in client.list_objects("registry-test", prefix="models/medical/v0003/", recursive=True)}
    assert {"models/medical/v0003/CLAIM", "models/medical/v0003/manifest.json", "models/medical/v0003/metrics.json",
            "models/medical/v0003/model/weights.bin", "models/medical/v0003/model/README.md"} <= names
    manifest = json.loads(client.get_object("registry-test", "models/medical/v0003/manifest.json").read())
    assert manifest["version"] == 3 and manifest["gate"]["promote"] is True
    assert manifest["files"]["model/weights.bin"]["size"] == 512
    assert store.put_if_absent("medical/v0003/CLAIM", b"{}") is False, "a claimed number cannot be claimed again"


def test_model_card_attributes_medquad_only_when_trained_on_it():
    from medembed.register.model_card import MEDQUAD_ATTRIBUTION, data_licence

    assert data_licence("bundled:medquad-sample") == MEDQUAD_ATTRIBUTION
    assert data_licence("s3://medembed-data/medquad/medquad.jsonl.gz") == MEDQUAD_ATTRIBUTION
    assert "check that data's licence" in data_licence("s3://bucket/clinic-faq.jsonl")
