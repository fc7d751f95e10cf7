"""Fine-tuning: sentence-transformers' trainer with MatryoshkaLoss around
MultipleNegativesRankingLoss, so one embedding can be cut to any configured dim."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import TrainConfig
from .data import DEV_FILE, TRAIN_FILE, read_jsonl
from .models import configure_torch, load_model, resolve_prompts

log = logging.getLogger(__name__)

TRAINING_INFO = "training_info.json"


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


def validate(config: TrainConfig, model_dim: int) -> list[int]:
    dims = sorted({int(d) for d in config.matryoshka_dims}, reverse=True)
    if not dims or dims[-1] <= 0:
        raise ValueError(f"matryoshka_dims must be positive integers, got {config.matryoshka_dims}")
    if dims[0] > model_dim:
        raise ValueError(f"matryoshka dim {dims[0]} exceeds the model's embedding size {model_dim}")
    if config.batch_size < 2:
        raise ValueError("batch_size must be at least 2: in-batch negatives need other pairs in the batch")
    return dims


def train(train_dir: Path, output_dir: Path, config: TrainConfig, work_dir: Path) -> TrainResult:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    device = configure_torch()
    bf16 = device == "cuda"
    query_prompt, passage_prompt = resolve_prompts(config.base_model, config.query_prompt, config.passage_prompt)
    model = load_model(config.base_model, query_prompt, passage_prompt, config.max_seq_length, device)
    dims = validate(config, model.get_embedding_dimension())

    train_rows = read_jsonl(Path(train_dir) / TRAIN_FILE)
    dev_path = Path(train_dir) / DEV_FILE
    dev_rows = read_jsonl(dev_path) if dev_path.exists() else []
    train_dataset = Dataset.from_list(train_rows).shuffle(seed=config.seed)
    dev_dataset = Dataset.from_list(dev_rows) if dev_rows else None
    evaluate_during_training = bool(config.eval_steps and dev_dataset is not None and len(dev_rows) >= 2)

    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), matryoshka_dims=dims)
    prompts = {"anchor": query_prompt, "positive": passage_prompt} if (query_prompt or passage_prompt) else None
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir / "checkpoints"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        bf16=bf16,
        # In-batch negatives: a duplicate text in a batch would be a false negative.
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        prompts=prompts,
        eval_strategy="steps" if evaluate_during_training else "no",
        eval_steps=config.eval_steps or None,
        save_strategy="no",
        logging_steps=max(1, min(50, config.eval_steps or 50)),
        seed=config.seed,
        report_to="none",
        dataloader_drop_last=len(train_rows) > config.batch_size,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=dev_dataset if evaluate_during_training else None,
        loss=loss,
    )
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir))
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
        device=device,
        bf16=bf16,
    )
    (output_dir / TRAINING_INFO).write_text(json.dumps(asdict(result), indent=2))
    log.info("trained %d steps in %.0f s on %s (bf16=%s), loss %.4f", result.steps, seconds, device, bf16, result.train_loss)
    return result
