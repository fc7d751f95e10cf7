import pytest

from medembed.config import E5_LARGE, ConfigError, load_config


def test_profiles_differ_where_the_product_says():
    local, cluster = load_config("local"), load_config("cluster")
    assert cluster.train.base_model == E5_LARGE
    assert cluster.train.matryoshka_dims == (1024, 768, 512, 384, 256, 128, 64)
    assert (cluster.train.epochs, cluster.train.warmup_steps, cluster.train.eval_steps, cluster.train.batch_size) == (5, 100, 1000, 32)
    assert local.train.base_model.startswith("bundled:")
    assert local.train.matryoshka_dims == (384, 256, 128, 64)
    assert cluster.registry.registry_uri.startswith("s3://")


def test_overrides_are_typed():
    config = load_config("local", ["train.epochs=3", "train.matryoshka_dims=256,64", "data.test_fraction=0.3"])
    assert config.train.epochs == 3
    assert config.train.matryoshka_dims == (256, 64)
    assert config.data.test_fraction == 0.3
    assert load_config("local").train.epochs == 1, "profiles must not be mutated by overrides"


def test_dict_overrides_and_json_list():
    config = load_config("cluster", {"train.matryoshka_dims": "[768, 128]", "cluster.minio_secure": "true"})
    assert config.train.matryoshka_dims == (768, 128)
    assert config.cluster.minio_secure is True


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=three", "cannot read train.epochs"),
        ("train.nope=1", "unknown config field 'train.nope'"),
        ("nope.epochs=1", "unknown config section"),
        ("train.epochs", "not of the form"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("local", [override])


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config("staging")


def test_node_selector_override_accepts_key_value_pairs():
    config = load_config("cluster", ["cluster.gpu_node_selector=cloud.google.com/gke-nodepool=h200-pool"])
    assert config.cluster.gpu_node_selector == (("cloud.google.com/gke-nodepool", "h200-pool"),)
    config = load_config("cluster", {"cluster.gpu_node_selector": '[["pool", "a"], ["zone", "b"]]'})
    assert config.cluster.gpu_node_selector == (("pool", "a"), ("zone", "b"))


def test_sections_survive_a_kfp_dict_round_trip():
    """KFP hands dict parameters back with ints as floats and tuples as lists."""
    import dataclasses
    import json

    from medembed.config import DataConfig, TrainConfig, section_from_dict

    train = load_config("cluster").train
    mangled = json.loads(json.dumps({k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                                     for k, v in dataclasses.asdict(train).items()}))
    restored = section_from_dict(TrainConfig, mangled)
    assert restored == train
    assert isinstance(restored.mini_batch_size, int) and isinstance(restored.matryoshka_dims[0], int)
    with pytest.raises(ConfigError, match="cannot read epochs=2.5"):
        section_from_dict(TrainConfig, {"epochs": 2.5})
    with pytest.raises(ConfigError, match="unknown DataConfig fields"):
        section_from_dict(DataConfig, {"colour": "red"})
