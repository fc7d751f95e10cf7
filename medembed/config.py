"""One configuration object for the whole product, with named profiles.

`local` runs on one CPU machine with what ships in the repo and on PyPI (no hub, no cluster);
`cluster` is the production shape: e5-large, all Matryoshka dims, a GPU node pool and MinIO.
Every field can be overridden per run (`section.field=value`), and the pipeline exposes the
run-level knobs as KFP parameters whose defaults come from the chosen profile.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"
BUNDLED_MEDQUAD_SAMPLE = "bundled:medquad-sample"
E5_LARGE = "intfloat/multilingual-e5-large"
# Prompts are resolved from the model name when left on "auto" (e5 models need them; GUIDE §4).
AUTO = "auto"


@dataclass(frozen=True)
class DataConfig:
    data_uri: str = BUNDLED_MEDQUAD_SAMPLE
    question_field: str = "question"
    passage_field: str = "answer"
    # Rows sharing any of these values end up in the same split (connected components).
    group_fields: tuple[str, ...] = ("doc_id", "focus")
    dev_fraction: float = 0.05
    test_fraction: float = 0.2
    # 0 = no cap. The local profile caps training pairs to fit the CPU time budget.
    max_train_pairs: int = 0
    min_train_pairs: int = 8
    seed: int = 13


@dataclass(frozen=True)
class TrainConfig:
    base_model: str = E5_LARGE
    matryoshka_dims: tuple[int, ...] = (1024, 768, 512, 384, 256, 128, 64)
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_steps: int = 100
    eval_steps: int = 1000
    max_seq_length: int = 512
    query_prompt: str = AUTO
    passage_prompt: str = AUTO
    seed: int = 13


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 64
    # Rows of the score matrix computed at once: bounds memory for large corpora.
    query_chunk_size: int = 1024


@dataclass(frozen=True)
class RegistryConfig:
    # Local folder, or s3://bucket/prefix (MinIO endpoint and keys come from the environment).
    registry_uri: str = "registry"
    model_name: str = "medical-embeddings"
    # Promotion gate: the candidate must beat the base model by at least this NDCG@10 at every dim.
    min_ndcg_gain: float = 0.0


@dataclass(frozen=True)
class ClusterConfig:
    image: str = "ghcr.io/medembed/medembed:0.1.0"
    gpu_resource: str = "nvidia.com/gpu"
    gpu_count: int = 1
    gpu_node_selector: tuple[tuple[str, str], ...] = (("cloud.google.com/gke-nodepool", "gpu-pool"),)
    gpu_toleration_key: str = "nvidia.com/gpu"
    gpu_toleration_effect: str = "NoSchedule"
    train_cpu: str = "8"
    train_memory: str = "64Gi"
    cpu_task_cpu: str = "4"
    cpu_task_memory: str = "16Gi"
    minio_secret: str = "medembed-minio"
    minio_endpoint: str = "minio.medembed.svc.cluster.local:9000"
    minio_secure: bool = False
    train_retries: int = 2


@dataclass(frozen=True)
class PipelineConfig:
    profile: str = "cluster"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def override(self, overrides: dict[str, Any] | list[str] | None) -> "PipelineConfig":
        """Apply `{"train.epochs": 3}` or `["train.epochs=3"]` style overrides, type-checked."""
        if not overrides:
            return self
        if isinstance(overrides, list):
            overrides = dict(_split_assignment(item) for item in overrides)
        config = self
        for dotted, value in overrides.items():
            section_name, _, field_name = dotted.partition(".")
            section = getattr(config, section_name, None)
            if section is None or not dataclasses.is_dataclass(section):
                raise ConfigError(f"unknown config section {section_name!r} in {dotted!r}")
            fields = {f.name: f for f in dataclasses.fields(section)}
            if field_name not in fields:
                raise ConfigError(f"unknown config field {dotted!r}; known: {', '.join(sorted(fields))}")
            current = getattr(section, field_name)
            section = dataclasses.replace(section, **{field_name: _coerce(value, current, dotted)})
            config = dataclasses.replace(config, **{section_name: section})
        return config


class ConfigError(ValueError):
    pass


LOCAL = PipelineConfig(
    profile="local",
    data=DataConfig(max_train_pairs=1600, dev_fraction=0.05, test_fraction=0.2),
    train=TrainConfig(
        base_model=BUNDLED_MINILM,
        matryoshka_dims=(384, 256, 128, 64),
        epochs=1,
        batch_size=32,
        learning_rate=5e-5,
        warmup_steps=5,
        eval_steps=0,
        max_seq_length=128,
    ),
    eval=EvalConfig(batch_size=64),
    registry=RegistryConfig(registry_uri="registry"),
)

CLUSTER = PipelineConfig(
    profile="cluster",
    data=DataConfig(data_uri="s3://medembed-data/medquad/medquad.jsonl.gz"),
    train=TrainConfig(),
    eval=EvalConfig(batch_size=256),
    registry=RegistryConfig(registry_uri="s3://medembed-registry/models"),
)

PROFILES: dict[str, PipelineConfig] = {"local": LOCAL, "cluster": CLUSTER}


def load_config(profile: str = "local", overrides: dict[str, Any] | list[str] | None = None) -> PipelineConfig:
    try:
        base = PROFILES[profile]
    except KeyError:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}") from None
    return base.override(overrides)


def _split_assignment(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} is not of the form section.field=value")
    return key.strip(), value.strip()


def _coerce(value: Any, current: Any, name: str) -> Any:
    if not isinstance(value, str):
        return tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value
    try:
        if isinstance(current, bool):
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
            raise ValueError(value)
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, tuple):
            parsed = json.loads(value) if value.startswith("[") else [v for v in value.split(",") if v]
            if current and isinstance(current[0], int):
                return tuple(int(v) for v in parsed)
            return tuple(parsed)
    except (ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {name}={value!r} as {type(current).__name__}") from exc
    return value


def component_image() -> str:
    """The project image every component runs in on the cluster (MEDEMBED_IMAGE overrides it at compile time)."""
    import os

    return os.environ.get("MEDEMBED_IMAGE", CLUSTER.cluster.image)
