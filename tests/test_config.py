"""The configuration: profiles, typing by annotation, validation with one-line messages, the run form."""

import dataclasses
import json
import re
import subprocess
import sys

import pytest

from medembed.config import (E5_LARGE, RUN_PARAMETERS, SECTIONS, ConfigError, DataConfig, PipelineConfig, TrainConfig,
                             load_config, parse_section)


def test_profiles_differ_where_the_product_says():
    local, cluster = load_config("local"), load_config("cluster")
    assert cluster.train.base_model.endswith(E5_LARGE) and cluster.train.base_model.startswith("s3://")
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


def test_types_come_from_annotations_not_defaults():
    # eval_dims defaults to (): its element type comes from the annotation.
    config = load_config("cluster", ["train.eval_dims=256,128"])
    assert config.train.eval_dims == (256, 128) and all(type(d) is int for d in config.train.eval_dims)
    # Values keep their spaces: e5's prompt ends in one.
    assert load_config("cluster", ["train.query_prompt=query: "]).train.query_prompt == "query: "


def test_dims_are_normalised_in_one_place():
    config = load_config("local", ["train.matryoshka_dims=64,256,256,128", "train.eval_dims=[64, 128, 64]"])
    assert config.train.matryoshka_dims == (256, 128, 64)
    assert config.train.eval_dims == (128, 64)


def test_dict_overrides_and_json_list():
    config = load_config("cluster", {"train.matryoshka_dims": "[768, 128]", "cluster.minio_secure": "true"})
    assert config.train.matryoshka_dims == (768, 128)
    assert config.cluster.minio_secure is True


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=three", r"train.epochs='three': expected an integer"),
        ("train.nope=1", "unknown config field 'train.nope'"),
        ("nope.epochs=1", "unknown config section"),
        ("train.epochs", "not of the form"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("local", [override])


@pytest.mark.parametrize(
    "override, accepted",
    [
        ("train.loss=foo", "choose one of mnrl, cached_mnrl"),
        ("data.pii_action=delete", "choose one of redact, fail, off"),
        ("train.epochs=-1", "must be at least 1"),
        ("data.test_fraction=1.5", r"must be in \(0, 1\)"),
        ("registry.model_name=bad name!", "letters, digits"),
        ("cluster.train_memory=64GB", "Kubernetes memory quantity"),
        ("train.eval_dims=abc", "comma-separated list of integers"),
        ("data.data_uri=", "must not be empty"),
        ("train.matryoshka_dims=0,64", "positive"),
        ("train.eval_dims=32", "not among train.matryoshka_dims"),
        ("eval.precisions=int8", "must include float32"),
        ("train.quantize_4bit=true", "set train.lora_r > 0"),
        ("train.best_metric=loss", "mean_ndcg@10"),
        ("cluster.train_cpu=eight", "Kubernetes CPU quantity"),
        ("train.learning_rate=0", r"must be in \(0, 1\)"),
        ("train.compute_copy=yes", "choose one of auto, on, off"),
        ("train.optimizer=sgd", "choose one of auto, adamw_torch, adamw_torch_fused"),
        ("eval.graph_encoder=always", "choose one of auto, on, off"),
        ("eval.graph_compile=fast", "choose one of reduce-overhead, default"),
        ("eval.row_tokens=100", r"must be in \[512, 1048576\]"),
    ],
)
def test_values_a_run_would_fail_on_are_refused_in_one_line(override, accepted):
    field, _, value = override.partition("=")
    with pytest.raises(ConfigError, match=rf"^{re.escape(field)}") as caught:
        load_config("cluster", [override])
    message = str(caught.value)
    assert "\n" not in message and message.startswith(field) and re.search(accepted, message)


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config("staging")


def test_node_selector_override_accepts_key_value_pairs():
    config = load_config("cluster", ["cluster.gpu_node_selector=cloud.google.com/gke-nodepool=h200-pool"])
    assert config.cluster.gpu_node_selector == (("cloud.google.com/gke-nodepool", "h200-pool"),)
    config = load_config("cluster", {"cluster.gpu_node_selector": '[["pool", "a"], ["zone", "b"]]'})
    assert config.cluster.gpu_node_selector == (("pool", "a"), ("zone", "b"))


def test_the_config_survives_a_kfp_dict_round_trip():
    """KFP hands dict parameters back with ints as floats and tuples as lists."""
    config = load_config("cluster", ["train.eval_dims=256", "train.lora_r=8"])

    def mangle(value):
        if isinstance(value, dict):
            return {k: mangle(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mangle(v) for v in value]
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    restored = PipelineConfig.from_dict(json.loads(json.dumps(mangle(config.to_dict()))))
    assert restored == config
    assert type(restored.train.mini_batch_size) is int and type(restored.train.matryoshka_dims[0]) is int
    with pytest.raises(ConfigError, match="train.epochs=2.5"):
        parse_section(TrainConfig, {"epochs": 2.5})
    with pytest.raises(ConfigError, match="data.colour"):
        parse_section(DataConfig, {"colour": "red"})
    incomplete = config.to_dict()
    del incomplete["train"]["epochs"]
    with pytest.raises(ConfigError, match=r"lacks fields \['epochs'\]"):
        PipelineConfig.from_dict(incomplete)


def test_run_parameters_then_overrides_each_field_one_path():
    config = load_config("cluster").with_run_parameters({"epochs": 2.0, "matryoshka_dims": [256.0, 64.0]},
                                                       {"train.lora_r": 4, "eval.precisions": ["float32", "int8"]})
    assert (config.train.epochs, config.train.matryoshka_dims, config.train.lora_r) == (2, (256, 64), 4)
    assert config.eval.precisions == ("float32", "int8")
    with pytest.raises(ConfigError, match="has its own run parameter 'epochs'"):
        load_config("cluster").with_run_parameters({}, {"train.epochs": 3})
    with pytest.raises(ConfigError, match="fixed when the pipeline is compiled"):
        load_config("cluster").with_run_parameters({}, {"cluster.image": "x"})
    with pytest.raises(ConfigError, match="unknown run parameters"):
        load_config("cluster").with_run_parameters({"epoch": 3})


def test_every_run_parameter_names_a_field_and_the_resolve_component_declares_exactly_them():
    import inspect

    from components.resolve import resolve_config

    for path in RUN_PARAMETERS.values():
        section, field = path.split(".")
        assert field in {f.name for f in dataclasses.fields(SECTIONS[section])}
    inputs = set(inspect.signature(resolve_config).parameters) - {"profile_config", "overrides", "resolved_config"}
    assert inputs == set(RUN_PARAMETERS)


def test_cli_refuses_bad_values_with_one_line_and_exit_2(tmp_path):
    """The issue's list, through the real console entry point: one line on stderr, exit 2, nothing written."""
    cases = ["train.loss=foo", "data.pii_action=delete", "train.epochs=-1", "data.test_fraction=1.5",
             "registry.model_name=bad name!", "cluster.train_memory=64GB", "train.eval_dims=abc", "data.data_uri="]
    script = ("import sys; from medembed.cli import main\n"
              "for case in sys.argv[1:]:\n"
              "    code = main(['compile', '--output', 'never.yaml', '--set', case])\n"
              "    print('EXIT', code, flush=True)\n")
    result = subprocess.run([sys.executable, "-c", script, *cases], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.stdout.split() == ["EXIT", "2"] * len(cases)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(cases) and "Traceback" not in result.stderr
    for case, line in zip(cases, errors):
        assert line.startswith(f"error: {case.split('=')[0]}=")
    assert not (tmp_path / "never.yaml").exists()



def test_gpu_speed_options_default_to_what_was_shown_equal():
    """Issue 14: the bf16 compute copy changes the numerics and its quality is unmeasured on a GPU, so it is
    opt-in; the kept GradCache graph gives the same gradients (test_gradcache), so it is on and does not
    change the training signature; the graph encoder's embeddings matched ST's fp32 encode on the H200."""
    from medembed.config import TRAIN_OPERATIONAL_FIELDS, EvalConfig, TrainConfig

    train, evaluation = TrainConfig(), EvalConfig()
    assert (train.compute_copy, train.gradcache_keep_graph, train.optimizer) == ("off", True, "auto")
    assert (evaluation.graph_encoder, evaluation.graph_compile, evaluation.row_tokens) == ("auto", "reduce-overhead", 16384)
    assert "gradcache_keep_graph" in TRAIN_OPERATIONAL_FIELDS
    assert dataclasses.replace(train, gradcache_keep_graph=False).signature() == train.signature()
    for change in ({"compute_copy": "auto"}, {"optimizer": "adamw_torch"}):
        assert dataclasses.replace(train, **change).signature() != train.signature()
