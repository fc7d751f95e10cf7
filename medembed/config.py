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
    # Extra renames applied to every input row, "target=source" (e.g. "question=prompt").
    column_map: tuple[str, ...] = ()
    # Validation: rows failing a check are dropped up to this fraction of all rows; past it prep fails.
    max_bad_row_fraction: float = 0.02
    max_query_chars: int = 2_000
    max_passage_chars: int = 100_000
    # The tokenizer (and hard-negative miner) is the training base model; truncation is counted against it.
    model: str = E5_LARGE
    max_seq_length: int = 512
    # Near-duplicates: MinHash (datasketch) over word shingles; texts are compared on their first words only.
    near_dup_threshold: float = 0.8
    minhash_perms: int = 64
    shingle_words: int = 3
    shingle_max_words: int = 120
    # Shingles in more than this fraction of texts are boilerplate (templated answer openings) and
    # are ignored, so they do not make answers about different diseases near-duplicates.
    boilerplate_shingle_fraction: float = 0.01
    # Token lengths are computed on at most this many distinct texts (a seeded sample beyond it).
    length_sample: int = 10_000
    # Distractor passages (from non-test groups) added to the evaluation corpus.
    eval_distractors: int = 2_000
    # Hard negatives per training pair (0 = none); a negative must score below the positive minus
    # the margin and below the ceiling, and never be a possible positive: an answer to a near-duplicate
    # question, a near-duplicate answer, or an answer with the same values of all negative_guard_fields
    # (same topic and question type). Rows missing any of these fields are guarded by their whole
    # connected group (document, focus, concepts), and () guards every row that way.
    num_negatives: int = 3
    negative_guard_fields: tuple[str, ...] = ("focus", "qtype")
    negative_margin: float = 0.05
    negative_max_score: float = 0.95
    mining_batch_size: int = 64
    # Mining sees passages cut to this many tokens (0 = max_seq_length): the opening of a medical
    # answer names its topic, and encoding cost grows faster than linearly with length.
    mining_max_seq_length: int = 0
    # Personal data: "redact" replaces identifiers with placeholders, "fail" stops prep, "off" skips.
    pii_action: str = "redact"
    # Characters of the passage added to the query for language detection (short queries are ambiguous).
    language_passage_chars: int = 120
    # Answer headings that only repeat the question: heading words found in the question, at least.
    heading_overlap: float = 0.6


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
    # "mnrl": MultipleNegativesRankingLoss; "cached_mnrl": its GradCache form, whose memory is bounded by
    # mini_batch_size rows however large batch_size (the in-batch negatives) is.
    loss: str = "mnrl"
    mini_batch_size: int = 128
    # cached_mnrl: when > 0, mini-batches hold up to this many real tokens instead of mini_batch_size rows
    # (short queries then go in few large forwards; memory follows tokens, not rows).
    mini_batch_tokens: int = 0
    # Rows of a batch ordered by length, so GradCache mini-batches carry little padding.
    sort_by_length: bool = True
    # Tokenising worker processes, so the GPU does not wait for the next batch; -1 = 4 on GPU, 0 on CPU.
    dataloader_workers: int = -1
    # Padding-free forward (packing.py): "auto" = on CUDA with torch's varlen attention, "on", "off".
    packed_attention: str = "auto"
    # torch.compile of each encoder layer on the packed path: "auto" = on CUDA, "on", "off".
    compile_layers: str = "auto"
    # Processes (one per GPU) on this node; 0 = one per visible GPU (1 on CPU).
    num_processes: int = 0
    # With several processes, score each query against the other processes' passages too.
    gather_across_devices: bool = True
    # Object-store checkpoints (local folder or s3://...; "" = none). A rerun with the same URI resumes.
    checkpoint_uri: str = ""
    checkpoint_steps: int = 500
    checkpoint_keep: int = 2
    # Evaluation during training (every eval_steps, 0 = off) on the dev split at these dims (() = all),
    # keeping the best checkpoint by best_metric ("mean_ndcg@10", or e.g. "dim256_ndcg@10").
    eval_dims: tuple[int, ...] = ()
    best_metric: str = "mean_ndcg@10"
    # LoRA adapters (rank 0 = full fine-tuning); quantize_4bit loads the base in 4-bit (QLoRA, CUDA).
    # The exported model has the adapters merged in.
    lora_r: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    quantize_4bit: bool = False


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 64
    # Rows of the score matrix computed at once: bounds memory for large corpora.
    query_chunk_size: int = 1024
    # Storage precisions scored at every dim (binary_rescore: Hamming candidates re-ranked by the float query).
    precisions: tuple[str, ...] = ("float32", "int8", "binary", "binary_rescore")
    # Binary rescoring looks at this many times the final k candidates (sentence-transformers' recipe).
    rescore_multiplier: int = 4
    # Recommend the smallest index whose NDCG@10 is within this relative drop of full-dim float32.
    tolerance: float = 0.02
    # Paired bootstrap over queries for fine-tuned-minus-base deltas.
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 13
    confidence: float = 0.95
    # Index sizes are also reported for a collection of this many passages.
    index_passages: int = 10_000_000
    # More BEIR-layout collections (folder or s3:// prefix with queries.jsonl, corpus.jsonl, qrels.tsv).
    extra_collections: tuple[str, ...] = ()
    # Encoder speed on GPU, as in TrainConfig: padding-free forward and compiled layers ("auto" = on CUDA).
    packed_attention: str = "auto"
    compile_layers: str = "auto"


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
    # The CPU budget (make run < 6 min on 2 cores) decides between more pairs and mined negatives.
    # Measured on the bundled sample (same eval split): a negatives column made a CPU step 2.7x dearer
    # (11.5 vs 4.2 s). 800 pairs with one mined negative (topic + question-type guard) tie 1,200 pairs
    # without (NDCG@10 0.886 vs 0.886 at 384, 0.877 vs 0.876 at 64) but take ~6 min instead of ~4.
    data=DataConfig(max_train_pairs=1200, dev_fraction=0.05, test_fraction=0.2, model=BUNDLED_MINILM,
                    max_seq_length=128, num_negatives=0, mining_max_seq_length=64,
                    eval_distractors=200),
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
    # Pre-emptible GPU nodes: checkpoints in MinIO, one folder per pipeline run (components/train.py).
    train=TrainConfig(checkpoint_uri="s3://medembed-checkpoints/train"),
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


def section_from_dict(section_type: type, values: dict[str, Any], ignore_unknown: bool = False):
    """A config section (DataConfig, TrainConfig, ...) from JSON-ish values, e.g. a KFP dict parameter.

    KFP carries dicts as protobuf Structs, so ints come back as floats and tuples as lists: every
    value is cast back to its field's type (a float 128.0 would break `range()` deep in training).
    """
    defaults = section_type()
    fields = {f.name for f in dataclasses.fields(section_type)}
    unknown = set(values) - fields
    if unknown and not ignore_unknown:
        raise ConfigError(f"unknown {section_type.__name__} fields {sorted(unknown)}; known: {sorted(fields)}")
    return section_type(**{
        name: _coerce(value, getattr(defaults, name), name) for name, value in values.items() if name in fields
    })


def _coerce(value: Any, current: Any, name: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        try:
            if isinstance(current, bool):
                return bool(value)
            if isinstance(current, int):
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                return int(value)
            if isinstance(current, float):
                return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"cannot read {name}={value!r} as {type(current).__name__}") from exc
        if isinstance(current, tuple) and isinstance(value, (list, tuple)):
            if current and isinstance(current[0], tuple):
                return tuple(tuple(item) for item in value)
            if current and isinstance(current[0], int):
                return tuple(int(item) for item in value)
            return tuple(value)
        return value
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
            if current and isinstance(current[0], tuple):
                # Pairs such as node selectors: "key=value,key2=value2" or JSON [[key, value], ...].
                return tuple(tuple(p) if isinstance(p, list) else tuple(_split_assignment(p)) for p in parsed)
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
