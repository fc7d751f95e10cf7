import json

import pytest

from medembed.register.registry import CHAMPION, ModelRegistry, decide_promotion
from medembed.storage import LocalStore, StorageError, open_store


def results(tuned: dict, base: dict, fingerprint="eval-1"):
    dims = sorted(tuned, reverse=True)
    return {
        "dims": dims,
        "eval_fingerprint": fingerprint,
        "base": {str(d): {"ndcg@10": base[d]} for d in dims},
        "finetuned": {str(d): {"ndcg@10": tuned[d]} for d in dims},
    }


def fake_model(tmp_path, name="model"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").write_bytes(b"\x00" * 1024)
    return folder


def card(version, decision):
    return f"card v{version} promote={decision.promote}"


def test_gate_requires_a_win_at_every_dim():
    assert decide_promotion(results({256: 0.6, 64: 0.5}, {256: 0.5, 64: 0.4})).promote
    decision = decide_promotion(results({256: 0.6, 64: 0.4}, {256: 0.5, 64: 0.4}))
    assert not decision.promote
    assert "dim 64" in decision.reasons[0]
    assert not decide_promotion(results({256: 0.6}, {256: 0.5}), min_gain=0.2).promote


def test_gate_compares_with_champion_only_on_the_same_eval_data():
    candidate = results({256: 0.6}, {256: 0.5})
    better_champion = results({256: 0.7}, {256: 0.5})
    assert not decide_promotion(candidate, better_champion).promote
    other_data_champion = results({256: 0.7}, {256: 0.5}, fingerprint="eval-2")
    assert decide_promotion(candidate, other_data_champion).promote


def exercise_registry(registry: ModelRegistry, tmp_path):
    first = registry.register(fake_model(tmp_path, "m1"), results({256: 0.6}, {256: 0.5}), {"base_model": "b"}, card)
    assert (first.version, first.promoted) == (1, True)
    assert registry.alias(CHAMPION) == 1

    loser = registry.register(fake_model(tmp_path, "m2"), results({256: 0.4}, {256: 0.5}), {"base_model": "b"}, card)
    assert (loser.version, loser.promoted) == (2, False)
    assert registry.alias(CHAMPION) == 1, "a losing model must not move the champion"
    assert registry.manifest(2)["gate"]["promote"] is False
    assert registry.store.get_bytes("medical/v0002/model/README.md") == b"card v2 promote=False"

    winner = registry.register(fake_model(tmp_path, "m3"), results({256: 0.65}, {256: 0.5}), {"base_model": "b"}, card)
    assert winner.promoted and registry.alias(CHAMPION) == 3
    assert registry.versions() == [1, 2, 3]
    assert registry.rollback() == 1
    assert registry.alias(CHAMPION) == 1
    assert registry.metrics(3)["finetuned"]["256"]["ndcg@10"] == 0.65
    return first, winner


def test_local_registry_versions_gate_and_rollback(tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path / "reg"), "medical")
    first, _ = exercise_registry(registry, tmp_path)
    assert (tmp_path / "reg/medical/v0001/model/weights.bin").stat().st_size == 1024
    assert first.model_uri == str(tmp_path / "reg/medical/v0001/model")


def test_incomplete_version_is_ignored_and_never_overwritten(tmp_path):
    store = LocalStore(tmp_path / "reg")
    store.put_bytes("medical/v0001/model/partial.bin", b"half an upload")
    registry = ModelRegistry(store, "medical")
    assert registry.versions() == []
    registration = registry.register(fake_model(tmp_path), results({256: 0.6}, {256: 0.5}), {}, card)
    assert registration.version == 2
    assert store.get_bytes("medical/v0001/model/partial.bin") == b"half an upload"
    assert registry.versions() == [2]


def test_alias_to_missing_version_is_refused(tmp_path):
    registry = ModelRegistry(LocalStore(tmp_path / "reg"), "medical")
    with pytest.raises(StorageError, match="no complete version 7"):
        registry.set_alias(7)
    with pytest.raises(StorageError, match="no earlier version"):
        registry.rollback()


def test_bad_model_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="model name"):
        ModelRegistry(LocalStore(tmp_path), "../escape")


def test_s3_registry_against_live_endpoint(s3_endpoint, tmp_path):
    store = open_store("s3://registry-test/models")
    registry = ModelRegistry(store, "medical")
    first, winner = exercise_registry(registry, tmp_path)
    assert first.model_uri == "s3://registry-test/models/medical/v0001/model"
    # Read back through a fresh client: the objects really are on the server.
    from medembed.storage import connect

    client = connect()
    names = {o.object_name for o in client.list_objects("registry-test", prefix="models/medical/v0003/", recursive=True)}
    assert {"models/medical/v0003/manifest.json", "models/medical/v0003/metrics.json",
            "models/medical/v0003/model/weights.bin", "models/medical/v0003/model/README.md"} <= names
    manifest = json.loads(client.get_object("registry-test", "models/medical/v0003/manifest.json").read())
    assert manifest["version"] == 3 and manifest["gate"]["promote"] is True
    downloaded = tmp_path / "download"
    assert store.download_dir("medical/v0003/model", downloaded) == 3
    assert (downloaded / "weights.bin").read_bytes() == b"\x00" * 1024


def test_model_card_attributes_medquad_only_when_trained_on_it():
    from medembed.register.model_card import MEDQUAD_ATTRIBUTION, data_licence

    assert data_licence("bundled:medquad-sample") == MEDQUAD_ATTRIBUTION
    assert data_licence("s3://medembed-data/medquad/medquad.jsonl.gz") == MEDQUAD_ATTRIBUTION
    assert "check that data's licence" in data_licence("s3://bucket/clinic-faq.jsonl")
