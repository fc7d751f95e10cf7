"""One configuration object for the whole product, with named profiles.

`local` runs on one CPU machine with what ships in the repo and on PyPI (no hub, no cluster);
`cluster` is the production shape: e5-large, all Matryoshka dims, a GPU node pool and MinIO.

How a value travels: a profile gives every field its default; `--set section.field=value` (CLI) or
the run form's named parameters and `overrides` (Kubeflow UI, `submit --param`) change it for one
run; the pipeline's first task resolves and validates the result once and hands the whole
`PipelineConfig` to every stage as one dict, which each stage reads back with `from_dict`.

Types come from the annotations (never from default values), values are checked when a section is
built (`__post_init__`), and every failure is a `ConfigError` whose one-line message names the
field, the value and what is accepted.

    >>> config = load_config("local", ["train.epochs=2", "train.matryoshka_dims=64,256,256"])
    >>> config.train.epochs, config.train.matryoshka_dims
    (2, (256, 64))
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"
BUNDLED_MEDQUAD_SAMPLE = "bundled:medquad-sample"
E5_LARGE = "intfloat/multilingual-e5-large"
# Prompts are resolved from the model name when left on "auto": e5 models need "query: " / "passage: ".
AUTO = "auto"

# Accepted values of enumerated fields. The modules that act on them import these, so an option is
# named in exactly one place.
PII_ACTIONS = ("redact", "fail", "off")
LOSSES = ("mnrl", "cached_mnrl")
SWITCHES = ("auto", "on", "off")
# torch.compile modes of the packed-row graph encoder (graph_encoder.py); "reduce-overhead" replays CUDA
# graphs, "aot_eager" traces without compiling (CPU tests), "off" runs it eagerly.
GRAPH_COMPILE_MODES = ("reduce-overhead", "default", "max-autotune", "aot_eager", "off")
# Optimizers the training recipe accepts; "auto" leaves transformers' default (fused AdamW with torch >= 2.8).
OPTIMIZERS = ("auto", "adamw_torch", "adamw_torch_fused")
PRECISIONS = ("float32", "int8", "binary", "binary_rescore")
# Query augmentation kinds (train/augment.py): the question without its template words, those words shuffled with
# the template's content words, a sentence of the passage as the query.
AUGMENT_KINDS = ("stripped", "keywords", "sentence")
# Built-in shifted probes (prep/probes.py), built from the held-out test split: query styles against the
# evaluation corpus (keyword, topic, lay, misspell) and forgetting probes with their own corpus (para, halves).
SHIFT_PROBES = ("keyword", "topic", "lay", "misspell", "para", "halves")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
BEST_METRIC_PATTERN = r"(mean|dim\d+)_(ndcg|mrr)@10"
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
# Kubernetes resource quantities (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/).
CPU_QUANTITY = r"\d+(\.\d+)?m?"
MEMORY_QUANTITY = r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?"


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming field, value and what is accepted."""


# ---------------------------------------------------------------- the sections


class _Section:
    """Shared behaviour of the frozen config sections: checks run when an instance is built."""

    SECTION: ClassVar[str] = ""

    def _fail(self, name: str, accepted: str) -> None:
        raise ConfigError(f"{self.SECTION}.{name}={getattr(self, name)!r}: {accepted}")

    def _at_least(self, name: str, low: float) -> None:
        if getattr(self, name) < low:
            self._fail(name, f"must be at least {low}")

    def _within(self, name: str, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
        value = getattr(self, name)
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above or (isinstance(value, float) and math.isnan(value)):
            brackets = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
            self._fail(name, f"must be in {brackets}")

    def _one_of(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            self._fail(name, f"choose one of {', '.join(choices)}")

    def _choices(self, name: str, choices: tuple[str, ...]) -> None:
        """A list field whose entries come from `choices`, each at most once."""
        values = getattr(self, name)
        if any(v not in choices for v in values) or len(set(values)) != len(values):
            self._fail(name, f"entries must be distinct, among {', '.join(choices)} (empty = none)")

    def _non_empty(self, *names: str) -> None:
        for name in names:
            if not str(getattr(self, name)).strip():
                self._fail(name, "must not be empty")

    def _matches(self, name: str, pattern: str, accepted: str) -> None:
        if not re.fullmatch(pattern, str(getattr(self, name))):
            self._fail(name, accepted)

    def _normalise_dims(self, name: str, allow_empty: bool = False) -> None:
        """Unique, positive, descending: the one place dims are put in order."""
        dims = getattr(self, name)
        if not dims and not allow_empty:
            self._fail(name, "give at least one dim, e.g. 384,256,128,64")
        if any(d <= 0 for d in dims):
            self._fail(name, "dims must be positive integers")
        object.__setattr__(self, name, tuple(sorted(set(dims), reverse=True)))


@dataclass(frozen=True)
class DataConfig(_Section):
    SECTION: ClassVar[str] = "data"

    # File, folder, s3:// URI or prefix (ending in /), `bundled:medquad-sample`, or several as tag=uri,tag2=uri2.
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
    # Seed of the split, the training-pair sample, distractors and mining (training has its own).
    seed: int = 13
    # Extra renames applied to every input row, "target=source" (e.g. "question=prompt").
    column_map: tuple[str, ...] = ()
    # Validation: rows failing a check are dropped up to this fraction of all rows; past it prep fails.
    max_bad_row_fraction: float = 0.02
    max_query_chars: int = 2_000
    max_passage_chars: int = 100_000
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
    # Hard negatives per training pair (0 = none), mined with the training base model; a negative
    # must score below the positive minus the margin and below the ceiling, and never be a possible
    # positive: an answer to a near-duplicate question, a near-duplicate answer, or an answer with the
    # same values of all negative_guard_fields (same topic and question type). Rows missing any of
    # these fields are guarded by their whole connected group, and () guards every row that way.
    num_negatives: int = 3
    negative_guard_fields: tuple[str, ...] = ("focus", "qtype")
    negative_margin: float = 0.05
    negative_max_score: float = 0.95
    mining_batch_size: int = 64
    # Mining sees passages cut to this many tokens (0 = train.max_seq_length): the opening of a
    # medical answer names its topic, and encoding cost grows faster than linearly with length.
    mining_max_seq_length: int = 0
    # Personal data: "redact" replaces identifiers with placeholders, "fail" stops prep, "off" skips.
    pii_action: str = "redact"
    # Characters of the passage added to the query for language detection (short queries are ambiguous).
    language_passage_chars: int = 120
    # Answer headings that only repeat the question: heading words found in the question, at least.
    heading_overlap: float = 0.6
    # Built-in shifted probes written under eval_data/probes/<name>/ and gated like guard collections (() = none).
    shift_probes: tuple[str, ...] = ("keyword", "lay", "misspell", "halves")
    # Queries per built-in probe: a seeded sample of the test split's (0 = all).
    shift_probe_max_queries: int = 0
    # Row fields with a pair's topic and question type (MedQuAD: focus, qtype), used by the probes when present.
    topic_field: str = "focus"
    qtype_field: str = "qtype"

    def __post_init__(self):
        if not self.data_uri.strip():
            self._fail("data_uri", "must not be empty: give a file, folder, s3:// URI or bundled:medquad-sample")
        self._non_empty("question_field", "passage_field")
        if self.question_field == self.passage_field:
            self._fail("passage_field", "must differ from data.question_field")
        self._within("dev_fraction", 0, 1, high_open=True)
        self._within("test_fraction", 0, 1, low_open=True, high_open=True)
        if self.dev_fraction + self.test_fraction >= 1:
            self._fail("test_fraction", f"data.dev_fraction + data.test_fraction must be below 1 (dev is {self.dev_fraction})")
        self._at_least("max_train_pairs", 0)
        self._at_least("min_train_pairs", 2)
        for mapping in self.column_map:
            target, sep, source = mapping.partition("=")
            if not (sep and target.strip() and source.strip()):
                self._fail("column_map", "each entry must be target=source, e.g. question=prompt")
        self._within("max_bad_row_fraction", 0, 1)
        self._at_least("max_query_chars", 1)
        self._at_least("max_passage_chars", 1)
        self._within("near_dup_threshold", 0, 1, low_open=True)
        self._at_least("minhash_perms", 16)
        self._at_least("shingle_words", 1)
        if self.shingle_max_words < self.shingle_words:
            self._fail("shingle_max_words", f"must be at least data.shingle_words ({self.shingle_words})")
        self._within("boilerplate_shingle_fraction", 0, 1, low_open=True)
        self._at_least("length_sample", 0)
        self._at_least("eval_distractors", 0)
        self._at_least("num_negatives", 0)
        self._at_least("negative_margin", 0)
        self._within("negative_max_score", 0, 1, low_open=True)
        self._at_least("mining_batch_size", 1)
        self._at_least("mining_max_seq_length", 0)
        self._one_of("pii_action", PII_ACTIONS)
        self._at_least("language_passage_chars", 0)
        self._within("heading_overlap", 0, 1)
        self._choices("shift_probes", SHIFT_PROBES)
        self._at_least("shift_probe_max_queries", 0)


# TrainConfig fields that change how fast or where a run goes, not what it computes (GradCache
# mini-batches, length sorting inside a batch and the packed path give the same loss). Every other
# field, including any added later, is part of `TrainConfig.signature()`: checkpoints are resumed, and
# a run is skipped as unchanged, only when the signature matches.
TRAIN_OPERATIONAL_FIELDS = frozenset({
    "checkpoint_uri", "checkpoint_steps", "checkpoint_keep", "dataloader_workers", "packed_attention",
    "compile_layers", "mini_batch_size", "mini_batch_tokens", "sort_by_length", "num_processes", "force_retrain",
    "keep_checkpoints", "gradcache_keep_graph",
})


@dataclass(frozen=True)
class TrainConfig(_Section):
    SECTION: ClassVar[str] = "train"

    # A sentence-transformers model: hub name, local folder, or bundled:all-MiniLM-L6-v2. Prep tokenises
    # and mines hard negatives with it too.
    base_model: str = E5_LARGE
    # Normalised to unique, descending; the largest must not exceed the model's embedding size.
    matryoshka_dims: tuple[int, ...] = (1024, 768, 512, 384, 256, 128, 64)
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_steps: int = 100
    eval_steps: int = 1000
    # Token limit for training, prep's truncation figures and mining, and evaluation of both models.
    max_seq_length: int = 512
    # "auto": "query: " / "passage: " for e5 models, none otherwise. Stored with the model.
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
    # bf16 compute copy + fp32 masters (mixed.py; CUDA, packed, full FT, 1 process); opt-in: quality unmeasured on GPU.
    compute_copy: str = "off"
    # cached_mnrl: the largest mini-batch keeps its first-pass graph, not re-embedded (same gradients; test_gradcache).
    gradcache_keep_graph: bool = True
    # transformers `optim`: "auto" = the trainer's default (fused AdamW, torch >= 2.8), adamw_torch, adamw_torch_fused.
    optimizer: str = "auto"
    # Processes (one per GPU) on this node; 0 = one per visible GPU (1 on CPU).
    num_processes: int = 0
    # With several processes, score each query against the other processes' passages too.
    gather_across_devices: bool = True
    # Object-store checkpoints (local folder or s3://...; "" = none). A retry of the same run resumes;
    # on the cluster each pipeline run gets its own folder under this URI.
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
    # Train even when the prepared data, base model and training settings equal the champion's
    # (by default such a run says so and stops after data prep).
    force_retrain: bool = False
    # Keep a run's checkpoints after its model is registered (default: deleted then; the checkpoint
    # bucket's expiry rule removes those of runs that never got that far).
    keep_checkpoints: bool = False
    # Query augmentation from the training data itself (train/augment.py), kinds among AUGMENT_KINDS; () = off.
    augment: tuple[str, ...] = ()
    # Share of training pairs that get one augmented row (0 = off, 1 = every pair).
    augment_rate: float = 0.0
    # WiSE-FT: exported weights = wise_alpha x fine-tuned + (1 - wise_alpha) x base (1 = no mix; full fine-tuning only).
    wise_alpha: float = 1.0
    # MatryoshkaLoss weight per dim, in descending dim order (() = all 1).
    matryoshka_weights: tuple[float, ...] = ()

    def __post_init__(self):
        self._non_empty("base_model")
        self._normalise_dims("matryoshka_dims")
        self._at_least("epochs", 1)
        # In-batch negatives need other pairs in the batch.
        self._at_least("batch_size", 2)
        self._within("learning_rate", 0, 1, low_open=True, high_open=True)
        self._at_least("warmup_steps", 0)
        self._at_least("eval_steps", 0)
        self._within("max_seq_length", 8, 8192)
        self._one_of("loss", LOSSES)
        self._at_least("mini_batch_size", 1)
        self._at_least("mini_batch_tokens", 0)
        self._at_least("dataloader_workers", -1)
        self._one_of("packed_attention", SWITCHES)
        self._one_of("compile_layers", SWITCHES)
        self._one_of("compute_copy", SWITCHES)
        self._one_of("optimizer", OPTIMIZERS)
        self._at_least("num_processes", 0)
        self._at_least("checkpoint_steps", 1)
        self._at_least("checkpoint_keep", 1)
        self._normalise_dims("eval_dims", allow_empty=True)
        unknown = sorted(set(self.eval_dims) - set(self.matryoshka_dims), reverse=True)
        if unknown:
            self._fail("eval_dims", f"{unknown} are not among train.matryoshka_dims {list(self.matryoshka_dims)}")
        self._matches("best_metric", BEST_METRIC_PATTERN, "use mean_ndcg@10, mean_mrr@10 or dim<N>_ndcg@10 / dim<N>_mrr@10")
        if (match := re.fullmatch(r"dim(\d+)_.*", self.best_metric)) and int(match.group(1)) not in (self.eval_dims or self.matryoshka_dims):
            self._fail("best_metric", "names a dim that is not evaluated during training")
        self._at_least("lora_r", 0)
        self._at_least("lora_alpha", 1)
        self._within("lora_dropout", 0, 1, high_open=True)
        if self.quantize_4bit and self.lora_r == 0:
            self._fail("quantize_4bit", "QLoRA trains adapters only: set train.lora_r > 0 too")
        self._choices("augment", AUGMENT_KINDS)
        self._within("augment_rate", 0, 1)
        self._within("wise_alpha", 0, 1)
        if self.wise_alpha < 1 and self.lora_r:
            self._fail("wise_alpha", "mixes fully fine-tuned weights with the base, not LoRA adapters: "
                                     "set train.wise_alpha=1 with train.lora_r > 0")
        if self.matryoshka_weights and (len(self.matryoshka_weights) != len(self.matryoshka_dims)
                                        or any(not w > 0 for w in self.matryoshka_weights)):
            self._fail("matryoshka_weights", f"give one positive weight per dim {list(self.matryoshka_dims)}, or none")

    def signature(self, world_size: int = 1) -> str:
        """SHA-256 of what determines the trained model: every field but TRAIN_OPERATIONAL_FIELDS,
        plus the number of processes (it sets the global batch)."""
        import hashlib

        bound = {k: v for k, v in sorted(dataclasses.asdict(self).items()) if k not in TRAIN_OPERATIONAL_FIELDS}
        bound["world_size"] = int(world_size)
        return hashlib.sha256(json.dumps(bound, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class EvalConfig(_Section):
    SECTION: ClassVar[str] = "eval"

    batch_size: int = 64
    # Rows of the score matrix computed at once: bounds memory for large corpora.
    query_chunk_size: int = 1024
    # Storage precisions scored at every dim (binary_rescore: Hamming candidates re-ranked by the float query).
    precisions: tuple[str, ...] = PRECISIONS
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
    # Packed-row graph encoder (graph_encoder.py), "auto" = on CUDA; H200: cosine >= 0.99997 vs ST fp32 encode.
    graph_encoder: str = "auto"
    # Its torch.compile mode: "reduce-overhead" (CUDA graphs), "default", "max-autotune", "aot_eager", "off".
    graph_compile: str = "reduce-overhead"
    # Real tokens per packed row of the graph encoder (one CUDA graph per row shape; never below max_seq_length).
    row_tokens: int = 16384

    def __post_init__(self):
        self._at_least("batch_size", 1)
        self._at_least("query_chunk_size", 1)
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or "float32" not in self.precisions:
            # float32 is the reference every other cell and the recommendation are measured against.
            self._fail("precisions", f"must include float32 and only {', '.join(PRECISIONS)}")
        object.__setattr__(self, "precisions", tuple(dict.fromkeys(self.precisions)))
        self._at_least("rescore_multiplier", 1)
        self._within("tolerance", 0, 1, high_open=True)
        self._at_least("bootstrap_samples", 100)
        self._within("confidence", 0, 1, low_open=True, high_open=True)
        self._at_least("index_passages", 1)
        if any(not uri.strip() for uri in self.extra_collections):
            self._fail("extra_collections", "entries must be folders or s3:// prefixes, not empty")
        self._one_of("packed_attention", SWITCHES)
        self._one_of("compile_layers", SWITCHES)
        self._one_of("graph_encoder", SWITCHES)
        self._one_of("graph_compile", GRAPH_COMPILE_MODES)
        self._within("row_tokens", 512, 1_048_576)


@dataclass(frozen=True)
class RegistryConfig(_Section):
    SECTION: ClassVar[str] = "registry"

    # Local folder, or s3://bucket/prefix (MinIO endpoint and keys come from the environment).
    registry_uri: str = "registry"
    model_name: str = "medical-embeddings"
    # Promotion gate, at every gated dim: the lower end of the NDCG@10 interval vs the base model must
    # exceed this, and the candidate must not be significantly worse than the champion or than the
    # base model on any guard collection (eval.extra_collections).
    min_ndcg_gain: float = 0.0
    # Dims the gate checks (() = every Matryoshka dim); e.g. only the dims your index uses.
    gate_dims: tuple[int, ...] = ()
    # When a run ends (succeeded or failed), POST a JSON summary here (a chat or incident webhook; "" = none).
    notify_url: str = ""

    def __post_init__(self):
        self._non_empty("registry_uri")
        self._normalise_dims("gate_dims", allow_empty=True)
        self._matches("model_name", MODEL_NAME_PATTERN, "use letters, digits, '.', '_' or '-' (starting with a letter or digit)")
        self._within("min_ndcg_gain", 0, 1, high_open=True)


@dataclass(frozen=True)
class ClusterConfig(_Section):
    """Where tasks run on a cluster. Fixed when the pipeline is compiled (Kubernetes settings are not run parameters)."""

    SECTION: ClassVar[str] = "cluster"

    # The project image every task runs in (images/Dockerfile).
    image: str = "ghcr.io/medembed/medembed:0.1.0"
    gpu_resource: str = "nvidia.com/gpu"
    # GPUs per model-running task (0 = run them on CPU nodes).
    gpu_count: int = 1
    gpu_node_selector: tuple[tuple[str, str], ...] = (("cloud.google.com/gke-nodepool", "gpu-pool"),)
    gpu_toleration_key: str = "nvidia.com/gpu"
    gpu_toleration_effect: str = "NoSchedule"
    # Requests and limits of the model-running tasks (prep when it mines, training, evaluation) and of
    # the CPU tasks (prep without mining, registration); memory limits equal requests (no overcommit).
    train_cpu: str = "8"
    train_cpu_limit: str = "16"
    train_memory: str = "64Gi"
    cpu_task_cpu: str = "4"
    cpu_task_cpu_limit: str = "8"
    cpu_task_memory: str = "16Gi"
    # Scratch disk per model-running task (a generic ephemeral volume at /scratch, TMPDIR): model
    # copies, checkpoints, encodings. storage class "" = the cluster's default.
    scratch_size: str = "200Gi"
    scratch_storage_class: str = ""
    # Shared memory for DataLoader workers on GPU tasks (an in-memory /dev/shm; containers get 64 MB).
    shm_size: str = "16Gi"
    # A ReadWriteMany PVC where base models from s3:// are cached for every task ("" = each task
    # downloads into its scratch volume). manifests/ creates it.
    model_cache_pvc: str = "medembed-model-cache"
    # Wall-clock limits: a hung task fails instead of holding a GPU for days.
    train_timeout_s: int = 86_400
    task_timeout_s: int = 4 * 3600
    minio_secret: str = "medembed-minio"
    minio_endpoint: str = "minio.medembed.svc.cluster.local:9000"
    minio_secure: bool = False
    # Pre-emptible GPU nodes kill pods: KFP retries the training task, which resumes from checkpoints.
    train_retries: int = 2

    def __post_init__(self):
        self._matches("image", r"[^\s]+", "must be an image reference without spaces, e.g. registry.example.com/medembed:1.0")
        self._non_empty("gpu_resource", "minio_endpoint")
        self._at_least("gpu_count", 0)
        if any(not key.strip() or not value.strip() for key, value in self.gpu_node_selector):
            self._fail("gpu_node_selector", "entries must be label=value with both parts non-empty")
        self._one_of("gpu_toleration_effect", TOLERATION_EFFECTS)
        for name in ("train_cpu", "train_cpu_limit", "cpu_task_cpu", "cpu_task_cpu_limit"):
            self._matches(name, CPU_QUANTITY, "must be a Kubernetes CPU quantity, e.g. 4 or 500m")
        for name in ("train_memory", "cpu_task_memory", "scratch_size", "shm_size"):
            self._matches(name, MEMORY_QUANTITY, "must be a Kubernetes memory quantity, e.g. 64Gi or 64G")
        if self.model_cache_pvc:
            self._matches("model_cache_pvc", r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", "must be a PVC name, or empty")
        self._at_least("train_timeout_s", 60)
        self._at_least("task_timeout_s", 60)
        self._matches("minio_secret", r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", "must be a Kubernetes Secret name (lowercase, digits, '-', '.')")
        self._at_least("train_retries", 0)


SECTIONS: dict[str, type] = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig,
                             "registry": RegistryConfig, "cluster": ClusterConfig}

# The run form's named parameters (Kubeflow UI, `submit --param NAME=VALUE`): the knobs runs vary
# most, each the run-time path of exactly one config field. Every other field (cluster.* aside) is
# set per run through the `overrides` parameter: {"train.lora_r": 8, "eval.precisions": ["float32"]}.
# components/resolve.py declares the same names as its inputs (a test keeps the two in step).
RUN_PARAMETERS: dict[str, str] = {
    "data_uri": "data.data_uri",
    "base_model": "train.base_model",
    "matryoshka_dims": "train.matryoshka_dims",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "loss": "train.loss",
    "force_retrain": "train.force_retrain",
    "registry_uri": "registry.registry_uri",
    "model_name": "registry.model_name",
    "notify_url": "registry.notify_url",
}
# Fixed when compiling: Kubernetes placement cannot change per run.
COMPILE_TIME_SECTIONS = ("cluster",)


@dataclass(frozen=True)
class PipelineConfig:
    profile: str = "cluster"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self):
        unknown = sorted(set(self.registry.gate_dims) - set(self.train.matryoshka_dims), reverse=True)
        if unknown:
            raise ConfigError(f"registry.gate_dims={list(self.registry.gate_dims)}: {unknown} are not among "
                              f"train.matryoshka_dims {list(self.train.matryoshka_dims)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples become lists): what KFP carries and `from_dict` reads back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PipelineConfig":
        """The inverse of `to_dict`, also after a trip through KFP (ints as floats, tuples as lists).
        Every field must be present: a stage never fills a gap with a default it was not given."""
        if not isinstance(values, dict):
            raise ConfigError(f"a configuration must be a JSON object, got {type(values).__name__}")
        unknown = sorted(set(values) - set(SECTIONS) - {"profile"})
        if unknown:
            raise ConfigError(f"unknown config sections {unknown}; known: {', '.join(SECTIONS)}")
        sections = {}
        for name, section_type in SECTIONS.items():
            given = values.get(name)
            if not isinstance(given, dict):
                raise ConfigError(f"configuration has no {name!r} section")
            missing = sorted(f.name for f in dataclasses.fields(section_type) if f.name not in given)
            if missing:
                raise ConfigError(f"configuration section {name!r} lacks fields {missing}")
            sections[name] = _build_section(section_type, given, name)
        return cls(profile=str(values.get("profile", "")), **sections)

    def override(self, overrides: dict[str, Any] | list[str] | None) -> "PipelineConfig":
        """Apply `{"train.epochs": 3}` or `["train.epochs=3"]` style overrides, typed by annotation."""
        if not overrides:
            return self
        if isinstance(overrides, (list, tuple)):
            overrides = dict(split_assignment(item) for item in overrides)
        changes: dict[str, dict[str, Any]] = {}
        for dotted, value in overrides.items():
            section_name, field_name = _field_path(dotted)
            changes.setdefault(section_name, {})[field_name] = value
        config = self
        for section_name, values in changes.items():
            section = getattr(config, section_name)
            current = dataclasses.asdict(section)
            current.update(values)
            config = dataclasses.replace(config, **{section_name: _build_section(type(section), current, section_name)})
        return config

    def with_run_parameters(self, run_values: dict[str, Any], overrides: dict[str, Any] | None = None) -> "PipelineConfig":
        """This config as one run sets it: named run parameters (RUN_PARAMETERS), then `overrides`.

        A field has one run-time path: one with a named parameter cannot also come through
        `overrides`, and cluster placement cannot change per run."""
        unknown = sorted(set(run_values) - set(RUN_PARAMETERS))
        if unknown:
            raise ConfigError(f"unknown run parameters {unknown}; known: {', '.join(RUN_PARAMETERS)} and overrides")
        overrides = dict(overrides or {})
        for dotted in overrides:
            section_name, _ = _field_path(dotted)
            if section_name in COMPILE_TIME_SECTIONS:
                raise ConfigError(f"overrides: {dotted} is fixed when the pipeline is compiled; "
                                  f"use `medembed compile --set {dotted}=...` (or submit --set) instead")
            named = next((name for name, path in RUN_PARAMETERS.items() if path == dotted), None)
            if named:
                raise ConfigError(f"overrides: {dotted} has its own run parameter {named!r}; set it there")
        return self.override({RUN_PARAMETERS[name]: value for name, value in run_values.items()}).override(overrides)

    def to_markdown(self) -> str:
        """Every field as a table, values that differ from the profile's default in bold."""
        defaults = PROFILES.get(self.profile)
        lines = [f"Profile `{self.profile}`; **bold**: changed from the profile.", "", "| field | value |", "| --- | --- |"]
        for section_name in SECTIONS:
            for name, value in dataclasses.asdict(getattr(self, section_name)).items():
                dotted = f"{section_name}.{name}"
                shown = f"`{json.dumps(value)}`"
                changed = defaults is not None and defaults.value(dotted) != getattr(getattr(self, section_name), name)
                lines.append(f"| {dotted} | {'**' + shown + '**' if changed else shown} |")
        return "\n".join(lines) + "\n"

    def value(self, dotted: str) -> Any:
        section_name, field_name = _field_path(dotted)
        return getattr(getattr(self, section_name), field_name)


# ---------------------------------------------------------------- profiles

LOCAL = PipelineConfig(
    profile="local",
    # The CPU budget (make run < 6 min on 2 cores) decides between more pairs and mined negatives.
    # Measured on the bundled sample (same eval split): a negatives column made a CPU step 2.7x dearer
    # (11.5 vs 4.2 s). 800 pairs with one mined negative (topic + question-type guard) tie 1,200 pairs
    # without (NDCG@10 0.886 vs 0.886 at 384, 0.877 vs 0.876 at 64) but take ~6 min instead of ~4.
    data=DataConfig(max_train_pairs=1200, dev_fraction=0.05, test_fraction=0.2, num_negatives=0,
                    mining_max_seq_length=64, eval_distractors=200),
    # Issue 10 (docs/QUALITY.md): on the bundled sample, training alone lost ~10% NDCG@10 on a forgetting probe;
    # query augmentation from the data (rate 1.0: 1,200 -> ~2,300 rows) with the weights mixed 0.4 / 0.6 with the
    # base (the weight the sample's shifted dev probes chose) left no shifted probe significantly below the base.
    train=TrainConfig(
        base_model=BUNDLED_MINILM,
        matryoshka_dims=(384, 256, 128, 64),
        epochs=1,
        batch_size=32,
        learning_rate=5e-5,
        warmup_steps=5,
        eval_steps=0,
        max_seq_length=128,
        augment=("stripped", "keywords", "sentence"),
        augment_rate=1.0,
        wise_alpha=0.4,
    ),
    eval=EvalConfig(batch_size=64),
    registry=RegistryConfig(registry_uri="registry"),
)

# Where `medembed models import-base intfloat/multilingual-e5-large ...` puts the production base model:
# no pipeline task downloads from a model hub.
E5_LARGE_MIRROR = "s3://medembed-registry/base-models/intfloat/multilingual-e5-large"

CLUSTER = PipelineConfig(
    profile="cluster",
    data=DataConfig(data_uri="s3://medembed-data/medquad/medquad.jsonl.gz"),
    # Pre-emptible GPU nodes: checkpoints in MinIO, one folder per pipeline run.
    train=TrainConfig(base_model=E5_LARGE_MIRROR, checkpoint_uri="s3://medembed-checkpoints/train"),
    eval=EvalConfig(batch_size=256),
    registry=RegistryConfig(registry_uri="s3://medembed-registry/models"),
)

PROFILES: dict[str, PipelineConfig] = {"local": LOCAL, "cluster": CLUSTER}


def load_config(profile: str = "local", overrides: dict[str, Any] | list[str] | None = None) -> PipelineConfig:
    try:
        base = PROFILES[profile]
    except KeyError:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(sorted(PROFILES))}") from None
    return base.override(overrides)


def split_assignment(item: str) -> tuple[str, str]:
    """'section.field=value' -> ('section.field', 'value'). The value is kept as given: a prompt's
    trailing space is part of it (e5's "query: ")."""
    key, sep, value = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} is not of the form section.field=value")
    return key.strip(), value


def parse_section(section_type: type, values: dict[str, Any]):
    """A typed, checked section from JSON-ish values (fields not given keep their defaults)."""
    return _build_section(section_type, values, section_type.SECTION)


def field_type(dotted: str) -> Any:
    section_name, field_name = _field_path(dotted)
    return typing.get_type_hints(SECTIONS[section_name])[field_name]


# ---------------------------------------------------------------- parsing by annotation


def _field_path(dotted: str) -> tuple[str, str]:
    section_name, _, field_name = dotted.partition(".")
    if section_name not in SECTIONS:
        raise ConfigError(f"unknown config section {section_name!r} in {dotted!r}; known: {', '.join(SECTIONS)}")
    names = [f.name for f in dataclasses.fields(SECTIONS[section_name])]
    if field_name not in names:
        raise ConfigError(f"unknown config field {dotted!r}; known in {section_name}: {', '.join(names)}")
    return section_name, field_name


def _build_section(section_type: type, values: dict[str, Any], section_name: str):
    hints = typing.get_type_hints(section_type)
    names = {f.name for f in dataclasses.fields(section_type)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config fields {', '.join(f'{section_name}.{n}' for n in unknown)}")
    typed = {name: parse_value(value, hints[name], f"{section_name}.{name}") for name, value in values.items()}
    return section_type(**typed)


def parse_value(value: Any, annotation: Any, name: str) -> Any:
    """`value` (CLI text, JSON, or a KFP-mangled value) as the annotated type, or a one-line ConfigError."""
    try:
        return _parse(value, annotation)
    except (TypeError, ValueError, json.JSONDecodeError):
        raise ConfigError(f"{name}={value!r}: expected {_describe(annotation)}") from None


def _parse(value: Any, annotation: Any) -> Any:
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.strip().lower() in ("1", "true", "yes")
        raise ValueError(value)
    if annotation is int:
        if isinstance(value, bool):
            raise TypeError(value)
        number = float(value.strip()) if isinstance(value, str) else value
        if isinstance(number, int):
            return number
        if isinstance(number, float) and number.is_integer():
            return int(number)
        raise ValueError(value)
    if annotation is float:
        if isinstance(value, bool):
            raise TypeError(value)
        number = float(value.strip() if isinstance(value, str) else value)
        if not math.isfinite(number):
            raise ValueError(value)
        return number
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: a list of any length
            if isinstance(value, str):
                text = value.strip()
                if text.startswith(("[", "{")):
                    value = json.loads(text)
                else:
                    value = [part for part in text.split(",") if part.strip()]
            if isinstance(value, dict):  # {"label": "value"} for key=value pairs
                value = list(value.items())
            if not isinstance(value, (list, tuple)):
                raise TypeError(value)
            return tuple(_parse(item, args[0]) for item in value)
        # A fixed-size tuple such as a (label, value) pair, also written "label=value".
        if isinstance(value, str):
            value = value.split("=", 1)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(value)
        return tuple(_parse(item, item_type) for item, item_type in zip(value, args))
    raise TypeError(f"unsupported annotation {annotation!r}")


def _describe(annotation: Any, plural: bool = False) -> str:
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            if typing.get_origin(args[0]) is tuple:
                return "label=value pairs, e.g. pool=gpu,zone=a"
            return f"a comma-separated list of {_describe(args[0], plural=True)} or a JSON list"
        return "a label=value pair"
    names = {str: ("text", "texts"), int: ("an integer", "integers"), float: ("a number", "numbers"),
             bool: ("true or false", "booleans")}
    return names.get(annotation, (str(annotation), str(annotation)))[plural]
