"""Fine-tuning: sentence-transformers' trainer with MatryoshkaLoss around MultipleNegativesRankingLoss
(or its GradCache form for large batches), so one embedding can be cut to any configured dim.

GPU speed (GUIDE §4, bench/bench_train.py): bf16 autocast, TF32, no cuDNN attention (it re-plans for
every shape), rows of each batch sorted by length so GradCache mini-batches carry little padding.
Robustness: checkpoints mirrored to the object store and resumed after a restart (checkpoints.py);
evaluation on the dev split during training with the best checkpoint kept; one process per GPU.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import TrainConfig
from .data import DEV_FILE, TRAIN_FILE, read_jsonl
from .models import configure_torch, load_model, resolve_prompts

log = logging.getLogger(__name__)

TRAINING_INFO = "training_info.json"
LOSSES = ("mnrl", "cached_mnrl")
EVALUATOR_NAME = "dev"


@dataclass
class TrainResult:
    model_dir: str
    base_model: str
    matryoshka_dims: list[int]
    query_prompt: str
    passage_prompt: str
    train_pairs: int
    steps: int
    epochs: int
    train_loss: float
    train_seconds: float
    device: str
    bf16: bool
    loss: str = "mnrl"
    batch_size: int = 0
    num_processes: int = 1
    resumed_from_step: int = 0
    best_checkpoint_step: int = 0
    best_metric: float | None = None
    lora_r: int = 0
    packed_attention: bool = False
    # Evaluation encodes base and fine-tuned models at this length, so neither sees more text.
    max_seq_length: int = 0


def validate(config: TrainConfig, model_dim: int) -> list[int]:
    dims = sorted({int(d) for d in config.matryoshka_dims}, reverse=True)
    if not dims or dims[-1] <= 0:
        raise ValueError(f"matryoshka_dims must be positive integers, got {config.matryoshka_dims}")
    if dims[0] > model_dim:
        raise ValueError(f"matryoshka dim {dims[0]} exceeds the model's embedding size {model_dim}")
    if config.batch_size < 2:
        raise ValueError("batch_size must be at least 2: in-batch negatives need other pairs in the batch")
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {config.loss!r}")
    if config.loss == "cached_mnrl" and config.mini_batch_size < 1:
        raise ValueError("mini_batch_size must be at least 1")
    if config.mini_batch_tokens < 0:
        raise ValueError("mini_batch_tokens must be 0 (mini-batches by rows) or a positive token count")
    if config.checkpoint_uri and config.checkpoint_steps < 1:
        raise ValueError("checkpoint_steps must be at least 1 when checkpoint_uri is set")
    unknown = sorted(set(int(d) for d in config.eval_dims) - set(dims))
    if unknown:
        raise ValueError(f"eval_dims {unknown} are not among the matryoshka dims {dims}")
    return dims


def build_loss(model, config: TrainConfig, dims: list[int]):
    """MatryoshkaLoss around (Cached)MultipleNegativesRankingLoss. With several processes the
    in-batch negatives are gathered from all of them (a no-op in a single process)."""
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    if config.loss == "cached_mnrl":
        inner = CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=config.mini_batch_size, mini_batch_num_tokens=config.mini_batch_tokens or None,
            gather_across_devices=config.gather_across_devices,
        )
    else:
        inner = MultipleNegativesRankingLoss(model, gather_across_devices=config.gather_across_devices)
    return MatryoshkaLoss(model, inner, matryoshka_dims=dims)


class LengthSortedCollator:
    """Orders the rows of each batch by passage length (longest first) before tokenising.

    The ranking loss is invariant to the order of pairs inside a batch, and GradCache slices the batch
    into consecutive mini-batches whose shared trailing padding sentence-transformers trims: sorted,
    each mini-batch is nearly padding-free. Longest first makes the first step the memory peak, so an
    out-of-memory shows at once."""

    def __init__(self, inner, key: str = "positive"):
        self.inner = inner
        self.key = key

    def __call__(self, features):
        features = sorted(features, key=lambda row: len(str(row.get(self.key) or "")), reverse=True)
        return self.inner(features)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def distributed_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def train(
    train_dir: Path,
    output_dir: Path,
    config: TrainConfig,
    work_dir: Path,
    curves_dir: Path | None = None,
    callbacks: list | None = None,
) -> TrainResult:
    """Fine-tune `config.base_model` on train_dir/train.jsonl and save it to output_dir.

    Launches one process per GPU (torchrun) when several are wanted and this is not already one of
    them. `callbacks` are extra transformers TrainerCallbacks (benchmarks use them to time steps)."""
    from . import distributed

    rank, world = distributed_env()
    wanted = distributed.processes_wanted(config)
    if wanted > 1 and world == 1:
        return distributed.launch(Path(train_dir), Path(output_dir), config, Path(work_dir), wanted, curves_dir)

    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers.trainer_utils import get_last_checkpoint

    from . import checkpoints, curves, lora, packing

    device = configure_torch()
    bf16 = device == "cuda"
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    query_prompt, passage_prompt = resolve_prompts(config.base_model, config.query_prompt, config.passage_prompt)
    lora.check_available(config, device)
    model = load_model(config.base_model, query_prompt, passage_prompt, config.max_seq_length, device)
    dims = validate(config, model.get_embedding_dimension())
    lora.apply(model, config)
    # 4-bit layers (QLoRA) are not compiled: bitsandbytes' kernels break the traced graph.
    packed = packing.apply(model, config.packed_attention, config.compile_layers, device, where="train.packed_attention",
                           compile_allowed=not config.quantize_4bit)

    train_rows = read_jsonl(Path(train_dir) / TRAIN_FILE)
    dev_path = Path(train_dir) / DEV_FILE
    dev_rows = read_jsonl(dev_path) if dev_path.exists() else []
    train_dataset = Dataset.from_list(train_rows).shuffle(seed=config.seed)
    evaluator = None
    if config.eval_steps and len(dev_rows) >= 2:
        evaluator = curves.RetrievalEvaluator(
            dev_rows, list(config.eval_dims) or dims, batch_size=config.mini_batch_size, name=EVALUATOR_NAME,
            packed_attention="on" if packed else "off",
        )

    checkpoint_store = checkpoints.CheckpointStore(
        config.checkpoint_uri, config.checkpoint_keep, binding=checkpoints.run_binding(train_dir, config, world),
    ) if config.checkpoint_uri else None
    # Checkpoints must fall on evaluation steps for the trainer to keep the best one.
    save_steps = config.checkpoint_steps
    if evaluator is not None and checkpoint_store is not None and save_steps % config.eval_steps:
        save_steps = config.eval_steps
        log.info("checkpoint_steps %d is not a multiple of eval_steps: checkpointing every %d steps", config.checkpoint_steps, save_steps)
    elif evaluator is not None and checkpoint_store is None:
        save_steps = config.eval_steps

    loss = build_loss(model, config, dims)
    prompts = column_prompts(train_dataset.column_names, query_prompt, passage_prompt)
    local_checkpoints = Path(work_dir) / "checkpoints"
    saving = evaluator is not None or checkpoint_store is not None
    args = SentenceTransformerTrainingArguments(
        output_dir=str(local_checkpoints),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        bf16=bf16,
        # In-batch negatives: a duplicate text in a batch would be a false negative.
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        prompts=prompts,
        eval_strategy="steps" if evaluator is not None else "no",
        eval_steps=config.eval_steps or None,
        save_strategy="steps" if saving else "no",
        save_steps=save_steps,
        # Locally only the newest (and the best) are needed; the store keeps its own `checkpoint_keep`.
        save_total_limit=2 if saving else None,
        load_best_model_at_end=evaluator is not None,
        metric_for_best_model=f"eval_{EVALUATOR_NAME}_{config.best_metric}" if evaluator is not None else None,
        greater_is_better=True,
        logging_steps=max(1, min(50, config.eval_steps or 50)),
        seed=config.seed,
        report_to="none",
        dataloader_drop_last=len(train_rows) > config.batch_size * world,
        ddp_backend="gloo" if device == "cpu" and world > 1 else None,
        dataloader_num_workers=_workers(config, device),
        dataloader_persistent_workers=_workers(config, device) > 0,
        # GradCache re-runs the forward pass per mini-batch: DDP must not expect one forward per step.
        ddp_find_unused_parameters=False if world > 1 else None,
    )
    resume_from = None
    if checkpoint_store is not None:
        _ = args.device  # sets up the process group (torchrun) before the barrier below
        if rank == 0:
            checkpoint_store.restore_latest(local_checkpoints)
        _barrier(world)
        resume_from = get_last_checkpoint(str(local_checkpoints)) if local_checkpoints.is_dir() else None

    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        evaluator=evaluator,
        loss=loss,
        callbacks=([checkpoints.make_callback(checkpoint_store)] if checkpoint_store else []) + list(callbacks or []),
    )
    if config.sort_by_length:
        trainer.data_collator = LengthSortedCollator(trainer.data_collator)
    resumed_step = _step_of(resume_from)
    if resume_from:
        log.info("resuming training at step %d", resumed_step)
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start

    best_step = _step_of(trainer.state.best_model_checkpoint) if evaluator is not None else 0
    result = TrainResult(
        model_dir=str(output_dir),
        base_model=config.base_model,
        matryoshka_dims=dims,
        query_prompt=query_prompt,
        passage_prompt=passage_prompt,
        train_pairs=len(train_rows),
        steps=output.global_step,
        epochs=config.epochs,
        train_loss=float(output.training_loss),
        train_seconds=round(seconds, 1),
        device=device.split(":")[0],
        bf16=bf16,
        loss=config.loss,
        batch_size=config.batch_size * world,
        num_processes=world,
        resumed_from_step=resumed_step,
        best_checkpoint_step=best_step,
        best_metric=trainer.state.best_metric,
        lora_r=config.lora_r,
        packed_attention=packed,
        max_seq_length=config.max_seq_length,
    )
    if rank == 0:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        packing.disable(model)  # the exported model is the plain padded one, whatever trained it
        lora.export(model, config, output_dir)
        (output_dir / TRAINING_INFO).write_text(json.dumps(asdict(result), indent=2))
        if curves_dir is not None:
            curves.write(trainer.state.log_history, Path(curves_dir), config.best_metric)
    log.info(
        "trained %d steps (from %d) in %.0f s on %s x%d (bf16=%s, %s), loss %.4f",
        result.steps, resumed_step, seconds, result.device, world, bf16, config.loss, result.train_loss,
    )
    return result


def column_prompts(columns: list[str], query_prompt: str, passage_prompt: str) -> dict[str, str] | None:
    """The anchor is a query; the positive and every hard-negative column are passages, and with
    e5 a passage encoded without its "passage: " prompt is out of distribution."""
    if not (query_prompt or passage_prompt):
        return None
    return {column: query_prompt if column == "anchor" else passage_prompt for column in columns}


def _workers(config: TrainConfig, device: str) -> int:
    if config.dataloader_workers >= 0:
        return config.dataloader_workers
    # Tokenising 2 x 1024 texts per step on one core is a sizeable share of a GPU step: overlap it.
    return 4 if device.startswith("cuda") else 0


def _step_of(checkpoint_path: str | None) -> int:
    if not checkpoint_path:
        return 0
    try:
        return int(str(checkpoint_path).rstrip("/").rsplit("-", 1)[-1])
    except ValueError:
        return 0


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
