"""Training throughput, side by side in one run: naive ST defaults, what a competent user would run, the product.

(a) naive: SentenceTransformerTrainer + MatryoshkaLoss(MNRL), fp32, batch 32, library defaults.
(b) competent: SentenceTransformerTrainer, bf16, MatryoshkaLoss(CachedMultipleNegativesRankingLoss) at
    batch 1024 in mini-batches of 128, rows of each batch sorted by passage length, e5 prompts, 4 tokenising
    workers, TF32 and cuDNN attention off (the product's own torch settings, docs/STACK-NOTES.md §3), fused AdamW.
(c) product: `medembed.train.recipe.train` itself (the code the training stage runs) with the cluster profile's
    TrainConfig and the overrides given (default: cached_mnrl, batch 1024, 40,960-token mini-batches).

Model: random-init e5-large shape (XLM-R large: 24 layers, hidden 1024, 16 heads, intermediate 4096,
vocab 250002) on a GPU; a 2-layer toy on CPU (`--shape tiny`, for CI). Synthetic pairs with
queries of 16-32 tokens and passages of 64-256 tokens. Each variant runs in its own process (clean
peak memory, no global torch settings leaking between variants).

MFU counts the model's FLOPs on real (non-padding) tokens only, forward + backward
(6 x non-embedding params + attention 12 x layers x hidden x length, per token), without GradCache's
extra no-grad forward, against `--peak-tflops` (790: bf16 dense matmul measured on this H200, docs/STACK-NOTES.md §3).

Prints one JSON object last; `--out` writes it (bench/results/train-h200.json shape).
"""

from __future__ import annotations

import argparse
import importlib.util
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("medembed") is None:  # not installed (e.g. a bare GPU machine): the repo's copy
    sys.path.insert(0, str(ROOT))

SHAPES = {
    "e5-large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096, vocab_size=250002),
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128, vocab_size=30522),
}
# The product's large-batch path (README "Training at GPU speed"): GradCache over 1024 pairs in mini-batches
# of at most 40,960 real tokens (45 GiB peak on the H200, inside the 48 GiB target). Packing and compiled
# layers are TrainConfig's "auto" defaults on a GPU.
PRODUCT_FAST_PATH = {"loss": "cached_mnrl", "batch_size": 1024, "mini_batch_size": 128, "mini_batch_tokens": 40960}
# The tiny CPU model's stand-in: the same loss, scaled down.
TINY_PRODUCT_PATH = {"loss": "cached_mnrl", "batch_size": 64, "mini_batch_size": 16, "mini_batch_tokens": 0}


def product_path(shape: str) -> dict:
    return dict(TINY_PRODUCT_PATH if shape == "tiny" else PRODUCT_FAST_PATH)


QUERY_TOKENS = (16, 32)
PASSAGE_TOKENS = (64, 256)


def default_tokenizer() -> str:
    carried = ROOT / ".carry" / "minilm"
    if carried.is_dir():
        return str(carried)
    from medembed.models import resolve_model_path
    from medembed.config import BUNDLED_MINILM

    return resolve_model_path(BUNDLED_MINILM)


def build_model(shape: str, tokenizer_dir: str, target: Path) -> Path:
    """A random-init XLM-R-shaped sentence-transformers model (mean pooling), saved to `target`.
    The name contains 'e5' so the product applies e5's query/passage prompts, as for the real model."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    if (target / "modules.json").exists():
        return target
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    # The (WordPiece) tokenizer only supplies ids < its vocab: the compute shape is what matters.
    config = XLMRobertaConfig(**SHAPES[shape], max_position_embeddings=514, type_vocab_size=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    hf_dir = target / "hf"
    # Random init of 560M parameters takes tens of seconds on a CPU; on the GPU, a second.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        XLMRobertaModel(config).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=512)
    model = SentenceTransformer(modules=[transformer, Pooling(config.hidden_size, pooling_mode="mean"), Normalize()], device="cpu")
    model.save(str(target))
    return target


def benchmark_model(shape: str | None, model_dir: str | None, tokenizer: str | None = None) -> tuple[str, str, Path]:
    """(shape, tokenizer, model folder) every GPU benchmark uses: e5-large on a GPU, tiny on CPU, built
    once per shape under the temp dir unless `model_dir` is given."""
    import torch

    shape = shape or ("e5-large" if torch.cuda.is_available() else "tiny")
    tokenizer = tokenizer or default_tokenizer()
    target = Path(model_dir or Path(tempfile.gettempdir()) / f"bench-e5-{shape}-random")
    build_model(shape, tokenizer, target)
    return shape, tokenizer, target


def synthetic_pairs(tokenizer_dir: str, n: int, seed: int = 0) -> list[dict]:
    """Unique pairs of random single-token words: queries 16-32 tokens, passages 64-256."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    words = [w for w in tok.get_vocab() if w.isalpha() and w.isascii() and len(w) >= 3]
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    return [{"anchor": f"{i} " + text(*QUERY_TOKENS), "positive": f"{i} " + text(*PASSAGE_TOKENS)} for i in range(n)]


def token_lengths(model, texts: list[str], prompt: str) -> list[int]:
    tok = model.tokenizer
    ids = tok([prompt + t for t in texts], truncation=True, max_length=model.max_seq_length)["input_ids"]
    return [len(i) for i in ids]


def model_flops(model, lengths: list[int], train: bool) -> float:
    """FLOPs for sequences of these real lengths: 2 (fwd) or 6 (fwd+bwd) x params x tokens, plus attention."""
    cfg = model[0].auto_model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "word_embeddings" not in n)
    factor = 6 if train else 2
    attn = (12 if train else 4) * cfg.num_hidden_layers * cfg.hidden_size
    return sum(factor * params * n + attn * n * n for n in lengths)


def _compiled_graphs() -> int:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["stats"].get("unique_graphs", 0))


class StepTimer:
    """TrainerCallback timing `timed` steps once warm-up is over (synchronising the GPU at the boundaries).

    Warm-up lasts at least `warmup` steps and goes on until no torch.compile graph was built during the last
    `settle` steps (or `max_warmup` steps have run): the first H200 run of issue 14 timed steps 3-6 while the
    product's compiled layers were still compiling. Graphs built inside the timed window are counted
    (`graphs_while_timed`); the bench fails loudly if any were. With `restarts` > 0, a step that compiled inside
    the window shows that warm-up was not over: the window is dropped (kept in `discarded`) and a new one starts
    after that step, at most `restarts` times. With `profile` set, the step after the timed window runs under
    torch.profiler (not timed). Training stops after that."""

    def __new__(cls, warmup: int, timed: int, max_warmup: int = 0, settle: int = 2, profile_dir: str | None = None,
                restarts: int = 0):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.warmup, self.timed = warmup, timed
                self.max_warmup, self.settle = max(max_warmup, warmup), max(settle, 0)
                self.start, self.start_step, self.steps, self.seconds = None, None, 0, 0.0
                self.graphs_by_step = [_compiled_graphs()]  # graphs built so far, after each step (index 0: before)
                self.graphs_at_start = self.graphs_while_timed = 0
                self.step_log = []  # (seconds, graphs compiled) of each timed step
                self.restarts_left, self.discarded = max(restarts, 0), []  # windows dropped for a compile
                self.profile = None
                self._prof = None

            def _sync(self):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()

            def on_step_begin(self, args, state, control, **kwargs):
                if profile_dir and self.start_step is not None and state.global_step == self.start_step + self.timed:
                    import torch
                    from torch.profiler import ProfilerActivity, profile

                    self._sync()
                    cuda = torch.cuda.is_available()
                    self._prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
                    self._prof.__enter__()
                    self._prof_start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self._sync()
                now = time.perf_counter()
                step = state.global_step
                if self._prof is not None:
                    import torch

                    from profile_train import summarise

                    self._prof.__exit__(None, None, None)
                    self.profile = summarise(self._prof, now - self._prof_start, torch.cuda.is_available(), Path(profile_dir))
                    self._prof = None
                    control.should_training_stop = True
                    return
                graphs = _compiled_graphs()
                if self.start_step is None:
                    self.graphs_by_step.append(graphs)
                    settled = step >= self.settle and graphs == self.graphs_by_step[step - self.settle]
                    if step >= self.warmup and (settled or step >= self.max_warmup):
                        self.start, self.start_step, self.graphs_at_start = now, step, graphs
                    return
                if step <= self.start_step + self.timed:
                    compiled = graphs - self.graphs_by_step[-1]
                    # Per timed step: seconds and graphs compiled (a step that compiled is seen at once).
                    self.step_log.append((round(now - self.start - self.seconds, 3), compiled))
                    self.graphs_by_step.append(graphs)
                    if compiled and self.restarts_left:
                        # Still warming up: drop this window, time a new one from the next step.
                        self.restarts_left -= 1
                        self.discarded.append({"window_start_step": self.start_step, "restarted_after_step": step,
                                               "steps": [{"seconds": sec, "graphs_compiled": g} for sec, g in self.step_log]})
                        self.start, self.start_step, self.graphs_at_start = now, step, graphs
                        self.steps, self.seconds, self.step_log = 0, 0.0, []
                        return
                    self.steps = step - self.start_step
                    self.seconds = now - self.start
                    # Graphs torch.compile built inside the timed window: > 0 means warm-up was too short.
                    self.graphs_while_timed = graphs - self.graphs_at_start
                if step >= self.start_step + self.timed and not profile_dir:
                    control.should_training_stop = True

        return _Timer()


def run_variant(variant: str, spec: dict) -> dict:
    import torch

    model_dir, tokenizer_dir = Path(spec["model_dir"]), spec["tokenizer"]
    batch = spec["naive_batch"] if variant == "naive" else spec["overrides"].get("batch_size", 1024)
    # Small naive steps are quick: time more of them for a stable figure.
    timed = spec["steps"] * (3 if variant == "naive" else 1)
    profile_dir = spec.get("profile") if variant == "product" else None
    max_warmup = max(spec.get("max_warmup", 0), spec["warmup"])
    # Rows for the longest warm-up, the timed steps and the profiled one; training stops after those.
    # The same generator and seed for every variant: a variant's rows are a prefix of a longer one's.
    restarts = spec.get("restarts", 0)
    steps = max_warmup + timed * (1 + restarts) + 1
    rows = synthetic_pairs(tokenizer_dir, batch * steps, seed=1)
    timer = StepTimer(spec["warmup"], timed, max_warmup=max_warmup, settle=spec.get("settle", 2), profile_dir=profile_dir,
                      restarts=restarts)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if variant == "naive":
            model, info = _train_naive(model_dir, rows, batch, work, timer)
        elif variant == "competent":
            model, info = _train_competent(model_dir, rows, spec["competent"], work, timer)
        else:
            model, info = _train_product(model_dir, rows, spec["overrides"], work, timer)
    prompted = variant in ("product", "competent")
    q_prompt = (model.prompts or {}).get("query", "") if prompted else ""
    p_prompt = (model.prompts or {}).get("document", "") if prompted else ""
    measured_rows = rows
    q_len = token_lengths(model, [r["anchor"] for r in measured_rows], q_prompt)
    p_len = token_lengths(model, [r["positive"] for r in measured_rows], p_prompt)
    per_pair_tokens = (sum(q_len) + sum(p_len)) / len(measured_rows)
    per_pair_flops = model_flops(model, q_len + p_len, train=True) / len(measured_rows)
    pairs_per_s = timer.steps * batch / timer.seconds if timer.seconds else 0.0
    result = {
        "pairs_per_s": round(pairs_per_s, 1),
        "tokens_per_s": round(pairs_per_s * per_pair_tokens),
        "mfu": round(pairs_per_s * per_pair_flops / (spec["peak_tflops"] * 1e12), 4),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "batch_size": batch,
        "measured_steps": timer.steps,
        "seconds": round(timer.seconds, 2),
        "real_tokens_per_pair": round(per_pair_tokens, 1),
    }
    result.update(info)
    result["warmup_steps"] = timer.start_step
    result["graphs_compiled_by_step"] = timer.graphs_by_step
    result["timed_steps"] = [{"seconds": sec, "graphs_compiled": g} for sec, g in timer.step_log]
    result["graphs_compiled_while_timed"] = timer.graphs_while_timed
    if timer.discarded:
        result["discarded_windows"] = timer.discarded
    result["graphs_compiled_total"] = _compiled_graphs()
    if timer.steps < timed:
        result["invalid"] = f"only {timer.steps} of {timed} steps were timed"
    elif timer.graphs_while_timed:
        result["invalid"] = f"{timer.graphs_while_timed} graph(s) compiled inside the timed window: warm-up too short"
    if timer.profile is not None:
        result["profile"] = timer.profile
    return result


def _train_naive(model_dir, rows, batch, work, timer):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    model = SentenceTransformer(str(model_dir))
    dims = [d for d in (1024, 768, 512, 384, 256, 128, 64) if d <= model.get_embedding_dimension()] or [model.get_embedding_dimension()]
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), matryoshka_dims=dims)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "out"), per_device_train_batch_size=batch, num_train_epochs=1,
        save_strategy="no", report_to="none", logging_steps=1000, dataloader_drop_last=True,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), loss=loss, callbacks=[timer])
    trainer.train()
    return model, {"config": "sentence-transformers defaults: fp32, MNRL in MatryoshkaLoss, batch %d" % batch}


def _train_competent(model_dir, rows, options, work, timer):
    """What a competent sentence-transformers user runs for large-batch contrastive training."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss, MatryoshkaLoss

    from medembed.models import configure_torch
    from medembed.train.losses import LengthSortedCollator

    device = configure_torch()
    model = SentenceTransformer(str(model_dir), device=device)
    model.prompts = {"query": "query: ", "document": "passage: "}
    dims = [d for d in (1024, 768, 512, 384, 256, 128, 64) if d <= model.get_embedding_dimension()] or [model.get_embedding_dimension()]
    inner = CachedMultipleNegativesRankingLoss(model, mini_batch_size=options["mini_batch_size"])
    loss = MatryoshkaLoss(model, inner, matryoshka_dims=dims)
    cuda = torch.cuda.is_available()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "out"), per_device_train_batch_size=options["batch_size"], num_train_epochs=1,
        bf16=cuda, batch_sampler=BatchSamplers.NO_DUPLICATES, prompts={"anchor": "query: ", "positive": "passage: "},
        save_strategy="no", report_to="none", logging_steps=1000, dataloader_drop_last=True,
        dataloader_num_workers=4 if cuda else 0, optim="adamw_torch_fused" if cuda else "adamw_torch",
        learning_rate=2e-5, warmup_steps=0,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), loss=loss, callbacks=[timer])
    trainer.data_collator = LengthSortedCollator(trainer.data_collator)
    trainer.train()
    return model, {"config": {"trainer": "SentenceTransformerTrainer", "bf16": cuda, "batch_size": options["batch_size"],
                              "loss": "MatryoshkaLoss(CachedMultipleNegativesRankingLoss)",
                              "mini_batch_size": options["mini_batch_size"], "rows_sorted_by_length": True,
                              "prompts": True, "dataloader_workers": 4 if cuda else 0, "tf32": cuda,
                              "cudnn_attention": False, "optimizer": args.optim}}


def _train_product(model_dir, rows, overrides, work, timer):
    from sentence_transformers import SentenceTransformer

    from medembed.artifacts import TRAIN_FILE
    from medembed.config import CLUSTER
    from medembed.train import recipe

    train_dir = work / "train"
    train_dir.mkdir()
    with open(train_dir / TRAIN_FILE, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    config = dataclasses.replace(
        CLUSTER.train, base_model=str(model_dir), epochs=1, warmup_steps=0, eval_steps=0, checkpoint_uri="",
        matryoshka_dims=tuple(d for d in CLUSTER.train.matryoshka_dims if d <= SentenceTransformer(str(model_dir), device="cpu").get_embedding_dimension()),
    )
    config = dataclasses.replace(config, **overrides)
    result = recipe.train(train_dir, work / "model", config, work / "work", callbacks=[timer])
    model = SentenceTransformer(str(work / "model"), device="cpu")
    used = {k: v for k, v in dataclasses.asdict(config).items() if k in ("loss", "batch_size", "mini_batch_size", "mini_batch_tokens", "sort_by_length", "dataloader_workers", "max_seq_length", "packed_attention", "compile_layers", "compute_copy", "gradcache_keep_graph", "optimizer")}
    return model, {"config": used, "bf16": result.bf16, "packed": result.packed_attention, "train_loss": result.train_loss}


def versions() -> dict:
    import importlib.metadata as md
    import platform

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "sentence-transformers", "tokenizers", "datasets", "accelerate", "triton", "huggingface_hub",
                 "peft", "bitsandbytes", "kfp"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if torch.cuda.is_available():
        try:
            out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            out["driver"] = None
    out["cpu_count"] = os.cpu_count()
    # Unset = the tokenizers library's default (parallel); "false" made the first run's ST baselines serial.
    out["TOKENIZERS_PARALLELISM"] = os.environ.get("TOKENIZERS_PARALLELISM")
    return out


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = json.loads(value) if value[:1] in "0123456789[-tf" and value not in ("",) else value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: e5-large on GPU, tiny on CPU")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--variants", default="naive,competent,product")
    parser.add_argument("--competent-batch", type=int, default=None, help="default 1024 on GPU, 64 on CPU")
    parser.add_argument("--competent-mini-batch", type=int, default=None, help="default 128 on GPU, 16 on CPU")
    parser.add_argument("--profile", default=None, help="profile one more step of the product variant into this folder")
    parser.add_argument("--timeout", type=int, default=0, help="seconds per variant process (0 = none)")
    parser.add_argument("--product", action="append", default=[], help="TrainConfig override for (b), key=value (repeatable)")
    parser.add_argument("--extra", action="append", default=[], help="extra product variants: 'name:key=value,key=value'")
    parser.add_argument("--naive-batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3, help="least warm-up steps")
    parser.add_argument("--max-warmup", type=int, default=12,
                        help="warm-up goes on (at most this many steps) until no graph was compiled for --settle steps")
    parser.add_argument("--settle", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (3x for naive)")
    parser.add_argument("--restarts", type=int, default=0,
                        help="times a timed window in which a graph compiled is dropped and timed again from the next step")
    parser.add_argument("--variant-timeout", action="append", default=[],
                        help="name=seconds: this variant's process limit instead of --timeout (repeatable)")
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(run_variant(args.worker, json.loads(args.spec))), flush=True)
        return

    t0 = time.perf_counter()
    shape, tokenizer, model_dir = benchmark_model(args.shape, args.model_dir, args.tokenizer)
    print(f"model {shape} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    overrides = {**product_path(shape), **parse_overrides(args.product)}
    variants = [(v, overrides) for v in args.variants.split(",") if v]
    for extra in args.extra:
        name, _, body = extra.partition(":")
        variants.append((name, {**overrides, **parse_overrides([kv for kv in body.split(",") if kv])}))
    timeouts = {k: int(v) for k, _, v in (t.partition("=") for t in args.variant_timeout)}
    results = {}
    for name, over in variants:
        gpu = shape != "tiny"
        competent = {"batch_size": args.competent_batch or (1024 if gpu else 64),
                     "mini_batch_size": args.competent_mini_batch or (128 if gpu else 16)}
        if name == "competent":
            over = {"batch_size": competent["batch_size"]}
        spec = {"model_dir": str(model_dir), "tokenizer": tokenizer, "overrides": over, "naive_batch": args.naive_batch,
                "warmup": args.warmup, "max_warmup": args.max_warmup, "settle": args.settle, "steps": args.steps,
                "restarts": args.restarts, "peak_tflops": args.peak_tflops, "competent": competent,
                "profile": args.profile if name == "product" else None}
        kind = name if name in ("naive", "competent") else "product"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--spec", json.dumps(spec)], env=env,
                                  capture_output=True, text=True, timeout=timeouts.get(name, args.timeout) or None)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not lines:
                results[name] = {"error": (proc.stderr or proc.stdout)[-3000:]}
            else:
                results[name] = json.loads(lines[-1][7:])
        except subprocess.TimeoutExpired as exc:
            results[name] = {"error": f"timed out after {timeouts.get(name, args.timeout)} s", "stderr_tail": str(exc.stderr or "")[-2000:]}
        print(f"{name}: {json.dumps(results[name])[:600]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for base in ("naive", "competent"):
            valid = lambda r: r.get("pairs_per_s") and "invalid" not in r  # noqa: E731
            if valid(results.get("product", {})) and valid(results.get(base, {})):
                results["product"][f"speedup_vs_{base}"] = round(results["product"]["pairs_per_s"] / results[base]["pairs_per_s"], 3)
        report = {**results, "shape": shape, "peak_tflops": args.peak_tflops,
                  "lengths": {"query_tokens": QUERY_TOKENS, "passage_tokens": PASSAGE_TOKENS}, "versions": versions()}
        if args.out:  # after every variant: a run cut short still leaves what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    bad = {name: r.get("invalid") or "error" for name, r in results.items() if "invalid" in r or "error" in r}
    if bad:  # loudly: a figure with compilation (or an error) in it must not be quoted
        print(f"BENCH INVALID: {json.dumps(bad)}", file=sys.stderr, flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
