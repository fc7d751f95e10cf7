"""Several training processes on one node, run here as 2 CPU processes over gloo."""

from __future__ import annotations

import dataclasses
import json
import socket

import pytest

from conftest import make_rows, write_jsonl
from medembed import artifacts
from medembed.train import losses, stage
from medembed.config import TrainConfig, load_config

WORLD = 2
PER_RANK = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_loss(rank: int, port: int, model_dir: str, gather: bool, results) -> None:
    import torch
    import torch.distributed as dist
    from sentence_transformers import SentenceTransformer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = SentenceTransformer(model_dir, device="cpu")
        model.eval()
        rows = make_rows()[rank * PER_RANK : (rank + 1) * PER_RANK]
        features = [model.tokenize([r["question"] for r in rows]), model.tokenize([r["answer"] for r in rows])]
        loss = losses.build_loss(model, TrainConfig(loss="mnrl", gather_across_devices=gather, matryoshka_dims=(64,)))
        results[(rank, gather)] = float(loss(features, torch.zeros(PER_RANK)).detach())
    finally:
        dist.destroy_process_group()


def _worker(rank, port, model_dir, results):
    for gather in (True, False):
        _rank_loss(rank, port + (0 if gather else 1), model_dir, gather, results)


def _reference_losses(model_dir: str) -> dict[str, list[float]]:
    """Per-row MNRL in one process: each rank's rows scored against all passages, or against its own."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()
    rows = make_rows()[: WORLD * PER_RANK]
    with torch.no_grad():
        q = torch.nn.functional.normalize(model.encode([r["question"] for r in rows], convert_to_tensor=True), dim=-1)
        d = torch.nn.functional.normalize(model.encode([r["answer"] for r in rows], convert_to_tensor=True), dim=-1)
    scale = 20.0  # MultipleNegativesRankingLoss's default
    gathered, local = [], []
    for rank in range(WORLD):
        idx = torch.arange(rank * PER_RANK, (rank + 1) * PER_RANK)
        gathered.append(float(torch.nn.functional.cross_entropy(q[idx] @ d.T * scale, idx)))
        local.append(float(torch.nn.functional.cross_entropy(q[idx] @ d[idx].T * scale, torch.arange(PER_RANK))))
    return {"gathered": gathered, "local": local}


def test_two_processes_gather_in_batch_negatives(tiny_model_dir):
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(_free_port(), str(tiny_model_dir), results), nprocs=WORLD, join=True)
    reference = _reference_losses(str(tiny_model_dir))
    for rank in range(WORLD):
        # Gathered: each rank's queries are scored against all 8 passages of both ranks.
        assert results[(rank, True)] == pytest.approx(reference["gathered"][rank], rel=1e-3)
        # Without gathering only the rank's own 4 passages count: a different (easier) loss.
        assert results[(rank, False)] == pytest.approx(reference["local"][rank], rel=1e-3)
        assert results[(rank, True)] > results[(rank, False)]


def test_train_launches_one_process_per_device(tmp_path, tiny_model_dir):
    """num_processes=2 on CPU: the training stage starts torchrun with 2 gloo ranks; rank 0 saves the model."""
    rows = make_rows()
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    write_jsonl(train_dir / "train.jsonl", [{"anchor": r["question"], "positive": r["answer"]} for r in rows[:32]])
    config = TrainConfig(
        base_model=str(tiny_model_dir), matryoshka_dims=(64, 32), epochs=1, batch_size=4, learning_rate=1e-3,
        warmup_steps=0, eval_steps=0, max_seq_length=32, query_prompt="", passage_prompt="", num_processes=2,
        loss="cached_mnrl", mini_batch_size=2,
    )
    result = stage.run(dataclasses.replace(load_config("local"), train=config), train_dir, tmp_path / "model")
    info = json.loads((tmp_path / "model" / artifacts.TRAINING_INFO).read_text())
    assert result.num_processes == info["num_processes"] == 2
    assert info["batch_size"] == 8  # 4 per process x 2 processes in one step
    assert info["steps"] == 4  # 32 pairs / 8 per step
    assert (tmp_path / "model" / "modules.json").exists()
    assert dataclasses.asdict(result)["loss"] == "cached_mnrl"
