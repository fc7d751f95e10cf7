"""The training recipe for one process: setup, train, save.

sentence-transformers' trainer with MatryoshkaLoss around (Cached)MultipleNegativesRankingLoss, so one
embedding can be cut to any configured dim. Speed: bf16 autocast and TF32 on GPU, cuDNN attention off
(it re-plans for every shape), rows of each batch sorted by length so GradCache mini-batches carry
little padding, a padding-free compiled encoder on GPU (medembed.packing) whose layout and GradCache
mini-batches come from CPU-side text lengths (medembed.train.gradcache: no host sync per mini-batch), and
optionally a bf16 compute copy of the encoder with fp32 masters (medembed.mixed, train.compute_copy). Generalisation
(issue 10, docs/QUALITY.md): query augmentation from the data right after the training rows are read
(augment.py, train.augment / augment_rate) and WiSE-FT, the exported weights mixed with the base model's
(wiseft.py, train.wise_alpha), in `save`. Robustness: checkpoints
mirrored to the object store and resumed after a restart (checkpoints.py); evaluation on the dev split
during training with the best checkpoint kept (curves.py). With several GPUs, `launcher` starts one
such process per GPU; this module never launches anything.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import DEV_FILE, TRAIN_FILE, TrainingInfo, read_jsonl
from ..config import TrainConfig
from ..models import configure_torch, load_model, resolve_prompts
from . import augment, checkpoints, curves, lora, wiseft
from .losses import LengthSortedCollator, build_loss, column_prompts

log = logging.getLogger(__name__)

EVALUATOR_NAME = "dev"


@dataclass
class Recipe:
    """Everything setup() builds and the later phases use."""

    config: TrainConfig
    trainer: object
    model: object
    device: str
    bf16: bool
    rank: int
    world: int
    train_pairs: int
    augmented_rows: int
    query_prompt: str
    passage_prompt: str
    packed: bool
    has_evaluator: bool
    resume_from: str | None


def distributed_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def train(train_dir: Path, output_dir: Path, config: TrainConfig, work_dir: Path, curves_dir: Path | None = None,
          callbacks: list | None = None) -> TrainingInfo:
    """Fine-tune `config.base_model` on train_dir/train.jsonl and save it (rank 0) to output_dir.

    `callbacks` are extra transformers TrainerCallbacks (benchmarks use them to time steps)."""
    recipe = setup(Path(train_dir), config, Path(work_dir), callbacks)
    start = time.perf_counter()
    output = recipe.trainer.train(resume_from_checkpoint=recipe.resume_from)
    seconds = time.perf_counter() - start
    info = _training_info(recipe, output, seconds, output_dir)
    if recipe.rank == 0:
        save(recipe, info, Path(output_dir), curves_dir)
    log.info("trained %d steps (from %d) in %.0f s on %s x%d (bf16=%s, %s), loss %.4f", info.steps,
             info.resumed_from_step, seconds, info.device, recipe.world, recipe.bf16, config.loss, info.train_loss)
    return info


# ---------------------------------------------------------------- setup


def setup(train_dir: Path, config: TrainConfig, work_dir: Path, callbacks: list | None = None) -> Recipe:
    """Model (with prompts, LoRA, the packed encoder), data, loss, evaluator, checkpoints and the trainer."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer

    from .. import mixed, packing
    from . import gradcache

    rank, world = distributed_env()
    device = configure_torch()
    bf16 = device == "cuda"
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    query_prompt, passage_prompt = resolve_prompts(config.base_model, config.query_prompt, config.passage_prompt)
    lora.check_available(config, device)
    model = load_model(config.base_model, query_prompt, passage_prompt, config.max_seq_length, device)
    check_dims(config, model.get_embedding_dimension())
    lora.apply(model, config)
    # 4-bit layers (QLoRA) are not compiled: bitsandbytes' kernels break the traced graph.
    packed = packing.apply(model, config.packed_attention, config.compile_layers, device, where="train.packed_attention",
                           compile_allowed=not config.quantize_4bit)
    if mixed.wanted(config.compute_copy, device, world, config.lora_r, config.quantize_4bit, packed):
        mixed.enable(model, compile_layers=packing.wanted(config.compile_layers, device))

    train_rows = read_jsonl(train_dir / TRAIN_FILE)
    train_pairs = len(train_rows)
    if config.augment and config.augment_rate > 0:
        train_rows = augment.augment_rows(train_rows, tuple(config.augment), config.augment_rate, config.seed)
        log.info("query augmentation (%s, rate %g): %d extra rows", ",".join(config.augment), config.augment_rate,
                 len(train_rows) - train_pairs)
    dev_path = train_dir / DEV_FILE
    dev_rows = read_jsonl(dev_path) if dev_path.exists() else []
    train_dataset = Dataset.from_list(train_rows).shuffle(seed=config.seed)
    evaluator = None
    if config.eval_steps and len(dev_rows) >= 2:
        evaluator = curves.RetrievalEvaluator(
            dev_rows, list(config.eval_dims or config.matryoshka_dims), batch_size=config.mini_batch_size,
            name=EVALUATOR_NAME, packed_attention="on" if packed else "off",
        )
    checkpoint_store = checkpoints.CheckpointStore(
        config.checkpoint_uri, config.checkpoint_keep, binding=checkpoints.run_binding(train_dir, config, world),
    ) if config.checkpoint_uri else None
    local_checkpoints = work_dir / "checkpoints"
    args = _training_arguments(config, local_checkpoints, device, bf16, world, len(train_rows), evaluator is not None,
                               checkpoint_store is not None,
                               column_prompts(train_dataset.column_names, query_prompt, passage_prompt))
    resume_from = None
    if checkpoint_store is not None:
        _ = args.device  # sets up the process group (torchrun) before the barrier below
        if rank == 0:
            checkpoint_store.restore_latest(local_checkpoints)
        _barrier(world)
        resume_from = _last_checkpoint(local_checkpoints)
        if resume_from:
            log.info("resuming training at step %d", _step_of(resume_from))

    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        evaluator=evaluator,
        loss=build_loss(model, config, processes=world),
        callbacks=([checkpoints.make_callback(checkpoint_store)] if checkpoint_store else []) + list(callbacks or []),
    )
    if config.sort_by_length:
        trainer.data_collator = LengthSortedCollator(trainer.data_collator)
    if packed:  # text lengths on the CPU: packing layout and GradCache mini-batches without host syncs
        trainer.data_collator = gradcache.LengthsCollator(trainer.data_collator)
    return Recipe(config, trainer, model, device, bf16, rank, world, train_pairs, len(train_rows) - train_pairs,
                  query_prompt, passage_prompt,
                  packed, evaluator is not None, resume_from)


def check_dims(config: TrainConfig, model_dim: int) -> None:
    if config.matryoshka_dims[0] > model_dim:
        raise ValueError(f"train.matryoshka_dims: dim {config.matryoshka_dims[0]} exceeds the embedding size "
                         f"{model_dim} of {config.base_model}")


def _training_arguments(config: TrainConfig, output_dir: Path, device: str, bf16: bool, world: int, n_rows: int,
                        evaluating: bool, checkpointing: bool, prompts: dict | None):
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    # Checkpoints must fall on evaluation steps for the trainer to keep the best one.
    save_steps = config.checkpoint_steps
    if evaluating and (not checkpointing or save_steps % config.eval_steps):
        if checkpointing:
            log.info("checkpoint_steps %d is not a multiple of eval_steps: checkpointing every %d steps",
                     config.checkpoint_steps, config.eval_steps)
        save_steps = config.eval_steps
    saving = evaluating or checkpointing
    workers = _workers(config, device)
    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        bf16=bf16,
        # In-batch negatives: a duplicate text in a batch would be a false negative.
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        prompts=prompts,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=config.eval_steps or None,
        save_strategy="steps" if saving else "no",
        save_steps=save_steps,
        # Locally only the newest (and the best) are needed; the store keeps its own `checkpoint_keep`.
        save_total_limit=2 if saving else None,
        load_best_model_at_end=evaluating,
        metric_for_best_model=f"eval_{EVALUATOR_NAME}_{config.best_metric}" if evaluating else None,
        greater_is_better=True,
        logging_steps=max(1, min(50, config.eval_steps or 50)),
        seed=config.seed,
        report_to="none",
        dataloader_drop_last=n_rows > config.batch_size * world,
        ddp_backend="gloo" if device == "cpu" and world > 1 else None,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=device.startswith("cuda"),
        # GradCache re-runs the forward pass per mini-batch: DDP must not expect one forward per step.
        ddp_find_unused_parameters=False if world > 1 else None,
        # "auto": transformers' own default (fused AdamW with torch >= 2.8).
        **({"optim": config.optimizer} if config.optimizer != "auto" else {}),
    )


# ---------------------------------------------------------------- save


def _training_info(recipe: Recipe, output, seconds: float, output_dir: Path) -> TrainingInfo:
    config, state = recipe.config, recipe.trainer.state
    return TrainingInfo(
        model_dir=str(output_dir),
        base_model=config.base_model,
        matryoshka_dims=list(config.matryoshka_dims),
        query_prompt=recipe.query_prompt,
        passage_prompt=recipe.passage_prompt,
        train_pairs=recipe.train_pairs,
        augmented_rows=recipe.augmented_rows,
        wise_alpha=config.wise_alpha,
        steps=output.global_step,
        epochs=config.epochs,
        train_loss=float(output.training_loss),
        train_seconds=round(seconds, 1),
        device=recipe.device.split(":")[0],
        bf16=recipe.bf16,
        loss=config.loss,
        batch_size=config.batch_size * recipe.world,
        num_processes=recipe.world,
        resumed_from_step=_step_of(recipe.resume_from),
        best_checkpoint_step=_step_of(state.best_model_checkpoint) if recipe.has_evaluator else 0,
        best_metric=state.best_metric,
        lora_r=config.lora_r,
        packed_attention=recipe.packed,
        max_seq_length=config.max_seq_length,
    )


def save(recipe: Recipe, info: TrainingInfo, output_dir: Path, curves_dir: Path | None) -> None:
    """The plain padded model (adapters merged; mixed with the base when train.wise_alpha < 1),
    training_info.json and the training curves."""
    from .. import packing

    output_dir.mkdir(parents=True, exist_ok=True)
    packing.disable(recipe.model)  # the exported model is the plain padded one, whatever trained it
    if recipe.config.wise_alpha < 1:
        log.info("WiSE-FT: exporting %g x fine-tuned + %g x base weights", recipe.config.wise_alpha,
                 1 - recipe.config.wise_alpha)
        wiseft.mix_into(recipe.model, wiseft.base_state_of(recipe.config.base_model), recipe.config.wise_alpha)
    lora.export(recipe.model, recipe.config, output_dir)
    info.write(output_dir)
    if curves_dir is not None:
        curves.write(recipe.trainer.state.log_history, Path(curves_dir), recipe.config.best_metric)


# ---------------------------------------------------------------- helpers


def _workers(config: TrainConfig, device: str) -> int:
    if config.dataloader_workers >= 0:
        return config.dataloader_workers
    # Tokenising 2 x 1024 texts per step on one core is a sizeable share of a GPU step: overlap it.
    return 4 if device.startswith("cuda") else 0


def _last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


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
