"""Bulk encoding at GPU speed: the whole encoder compiled once, fixed-size packed rows, CUDA graphs.

Why (issue 14): the per-layer compiled packed encoder was host-bound (24 guarded compiled calls a batch,
~2 ms of CPU each; the GPU busy ~57% of a pass) and cast the fp32 weights to bf16 in every layer call.
This path removes both:

- tokenising: worker processes tokenise length-sorted chunks and drop the padding there. The processes are
  forked once per model and kept across `encode` calls (TokenizerPool: the first H200 runs forked 8
  DataLoader workers per call), a bounded window of chunks is kept in flight so they tokenise ahead of
  the GPU, and the first chunks are small (chunk_sizes) so the first rows are ready within tens of ms
  instead of after one worker has tokenised 256 of the longest texts;
- packing: the main process cuts the stream of real tokens into rows of `row_tokens` tokens (only the
  last row is shorter, rounded up to a multiple of TAIL_TOKENS), each holding the texts that fit; a row
  carries per-text positions, `cu_seq_lens` for varlen attention and a per-token text id for pooling.
  Text slots are padded to a few bucket sizes (SLOT_BUCKETS) with empty texts, so a pass sees a handful
  of distinct shapes;
- compute: encoder + pooling are one `torch.compile`d function (dynamic shapes, compiled once), by default
  in "reduce-overhead" mode, which replays a CUDA graph per distinct row shape: one launch a row instead
  of ~400 kernel launches. Row layouts are copied from pinned memory without blocking and the results are
  written back with device-side indices: no host synchronisation per row;
- precision: on CUDA an fp32 model is encoded through a bf16 copy of its weights, refreshed once per
  `encode` call (not cast again in every layer of every batch).

Padding tokens at the end of a row form one extra "text" whose outputs are discarded (their pooled sum
lands in a spare row); attention never crosses text boundaries and every other operation is per token,
so they cannot change real embeddings. Modules after Pooling (Normalize, Dense) run eagerly on the
pooled rows. The same code runs eagerly on CPU (tests compare it with sentence-transformers' encode).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import weakref
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)

from .config import GRAPH_COMPILE_MODES as COMPILE_MODES  # "aot_eager": traced whole, not compiled (CPU tests)
from .config import SWITCHES as MODES
POOLING_MODES = ("mean", "cls", "lasttoken")
ROW_TOKENS = 16384  # issue 14: packed 16k-token rows gave the best plain-PyTorch encode probe on the H200
TAIL_TOKENS = 2048  # the last (partial) row of a pass is rounded up to a multiple of this
SLOT_BUCKETS = (16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
# Texts tokenised per worker task, at most: small, so the first row is ready soon after a pass starts (the
# first H200 run used 1024: ~1 s of one worker's tokenising before the GPU got any work).
CHUNK_TEXTS = 256
# The first round of chunks (one per worker) holds this many texts; each later round twice as many, up to
# CHUNK_TEXTS (the second H200 run's profile: 675 ms of a 4.4 s pass waiting on the first chunks).
FIRST_CHUNK_TEXTS = 32
IN_FLIGHT_PER_WORKER = 4  # chunks submitted ahead per worker (DataLoader's prefetch_factor was 4)
_CACHE_ATTR = "_medembed_graph_encoder"


def supported(model) -> str | None:
    """None if `model` can use this path, else the reason it cannot."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    from . import packing

    reason = packing.supported(model)
    if reason:
        return reason
    modules = list(model.children())
    if len(modules) < 2 or not isinstance(modules[1], Pooling):
        return "second module is not Pooling"
    pooling = modules[1]
    if not isinstance(pooling.pooling_mode, str) or pooling.pooling_mode not in POOLING_MODES:
        return f"pooling mode {pooling.pooling_mode!r} is not one of {POOLING_MODES}"
    if not pooling.include_prompt:
        return "Pooling excludes the prompt"
    for module in modules[2:]:
        if type(module).__name__ not in ("Normalize", "Dense"):
            return f"module {type(module).__name__} after Pooling"
    auto_model = modules[0].auto_model
    from transformers import PreTrainedModel

    if not isinstance(auto_model, PreTrainedModel):
        return f"{type(auto_model).__name__} is not a plain transformers model (e.g. LoRA-wrapped)"
    if getattr(modules[0], "tokenizer", None) is not None and getattr(modules[0].tokenizer, "padding_side", "right") != "right":
        return "tokenizer pads on the left"
    return None


def wanted(mode: str, device: str) -> bool:
    if mode not in MODES:
        raise ValueError(f"graph encoder mode must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return False
    if mode == "on":
        return True
    from . import packing

    return device.startswith("cuda") and packing.varlen_available()


def slot_bucket(n: int) -> int:
    for size in SLOT_BUCKETS:
        if n <= size:
            return size
    return -(-n // 1024) * 1024


# ---------------------------------------------------------------------------------------------- CPU side


class Tokenize:
    """A chunk of text indices -> (indices, lengths, real token ids[, token types]), in this process.

    Uses the model's own `preprocess` (same tokenisation, prompt and truncation as its encode), then
    drops the padding, so only real tokens travel between processes."""

    def __init__(self, model, texts: list[str], prompt: str):
        self.model, self.texts, self.prompt = model, texts, prompt

    def __call__(self, indices):
        return _tokenized(self.model, np.asarray(indices, dtype=np.int64), [self.texts[i] for i in indices], self.prompt)


def chunk_sizes(count: int, workers: int, largest: int | None = None) -> list[int]:
    """Texts per chunk for `count` length-sorted texts: rounds of one chunk per worker, the first round of
    FIRST_CHUNK_TEXTS texts each, doubling per round up to `largest` (CHUNK_TEXTS)."""
    largest = max(1, largest or CHUNK_TEXTS)
    size, sizes, done = min(FIRST_CHUNK_TEXTS, largest), [], 0
    per_round = max(1, workers)
    while done < count:
        for _ in range(per_round):
            if done >= count:
                break
            sizes.append(min(size, count - done))
            done += sizes[-1]
        size = min(size * 2, largest)
    return sizes


def _chunks(texts: list[str], workers: int) -> list[list[int]]:
    """Text indices, longest first, cut into chunk_sizes."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    bounds = list(itertools.accumulate(chunk_sizes(len(order), workers), initial=0))
    return [order[a:b] for a, b in zip(bounds, bounds[1:])]


# Models whose TokenizerPool workers are (or may be re-)forked: the workers read the model from here.
_POOL_MODELS: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_POOL_KEYS = itertools.count()
_WORKER_MODEL = None  # in a pool worker: the model whose tokenizer it runs


def _pool_worker_init(key: int) -> None:
    import os

    global _WORKER_MODEL
    _WORKER_MODEL = _POOL_MODELS[key]  # a strong reference in the worker (forked: the model is in its memory)
    # One thread per process: the processes are the parallelism (the tokenizers library would otherwise start
    # a thread per core in each of them, when the parent had not used its threads before the fork).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _pool_tokenize(task):
    indices, texts, prompt = task
    return _tokenized(_WORKER_MODEL, np.asarray(indices, dtype=np.int64), texts, prompt)


def _tokenized(model, indices, texts: list[str], prompt: str):
    """(indices, lengths, real token ids[, token types]) of `texts`, padding dropped."""
    features = model.preprocess(texts, prompt=prompt or None)
    mask = features["attention_mask"].numpy().astype(bool)
    lengths = mask.sum(axis=1).astype(np.int32)
    ids = features["input_ids"].numpy()[mask].astype(np.int32)
    types = features.get("token_type_ids")
    types = types.numpy()[mask].astype(np.int32) if types is not None else None
    return indices, lengths, ids, types


class TokenizerPool:
    """`workers` processes forked once that tokenise chunks with one model's tokenizer (its `preprocess`:
    same prompt handling and truncation as its encode), kept across `encode` calls.

    Only the texts of each chunk travel to a worker and only real token ids come back. Forked after the
    model is loaded, so nothing is pickled but the texts; the workers never touch CUDA. Closed with the
    GraphEncoder that owns it (or at exit)."""

    def __init__(self, model, workers: int):
        import multiprocessing

        self.workers = workers
        self.key = next(_POOL_KEYS)
        _POOL_MODELS[self.key] = model
        self.pool = multiprocessing.get_context("fork").Pool(workers, initializer=_pool_worker_init, initargs=(self.key,))
        self.pids = {p.pid for p in self.pool._pool}

    def imap(self, tasks, window: int) -> Iterator:
        """Results of `tasks` in order, at most `window` submitted ahead of the one consumed."""
        pending = collections.deque()
        tasks = iter(tasks)
        for task in itertools.islice(tasks, window):
            pending.append(self.pool.apply_async(_pool_tokenize, (task,)))
        while pending:
            result = pending.popleft()
            while not result.ready():
                result.wait(1.0)
                if not result.ready() and {p.pid for p in self.pool._pool} != self.pids:
                    self.close()
                    raise RuntimeError("a tokenising worker process of the graph encoder died")
            item = result.get()
            for task in itertools.islice(tasks, 1):
                pending.append(self.pool.apply_async(_pool_tokenize, (task,)))
            yield item

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
        _POOL_MODELS.pop(self.key, None)


def pack_rows(chunks, row_tokens: int, position_offset: int, pad_id: int) -> Iterator[dict]:
    """Cut a stream of tokenised chunks (Tokenize's output, in order) into packed rows.

    Each row: `tokens` real tokens of `n` whole texts, padded to `width` (row_tokens, or the last row's
    tokens rounded up to TAIL_TOKENS) and `slots` text slots (slot_bucket(n)). Arrays (numpy):
    ids/positions/types/doc (width,), cu (slots + 2,) int32, lengths/gather (slots,), indices (n,)."""
    pend_idx, pend_len, pend_ids, pend_types = [], [], [], []
    have_types = None

    def emit(final: bool):
        nonlocal pend_idx, pend_len, pend_ids, pend_types
        if not pend_idx:
            return
        idx = np.concatenate(pend_idx)
        lens = np.concatenate(pend_len)
        ids = np.concatenate(pend_ids)
        types = np.concatenate(pend_types) if have_types else None
        ends = np.cumsum(lens, dtype=np.int64)
        start_tok = 0
        start_txt = 0
        while start_txt < len(lens):
            limit = start_tok + row_tokens
            stop = int(np.searchsorted(ends, limit, side="right"))
            stop = max(stop, start_txt + 1)
            if stop == len(lens) and not final:
                break  # keep the remainder: the next chunk may fill this row
            yield _row(idx[start_txt:stop], lens[start_txt:stop], ids[start_tok:ends[stop - 1]],
                       None if types is None else types[start_tok:ends[stop - 1]],
                       row_tokens, position_offset, pad_id, final and stop == len(lens))
            start_tok = int(ends[stop - 1])
            start_txt = stop
        pend_idx = [idx[start_txt:]]
        pend_len = [lens[start_txt:]]
        pend_ids = [ids[start_tok:]]
        pend_types = [types[start_tok:]] if types is not None else []

    for indices, lengths, ids, types in chunks:
        if have_types is None:
            have_types = types is not None
        pend_idx.append(indices)
        pend_len.append(lengths)
        pend_ids.append(ids)
        if have_types:
            pend_types.append(types)
        yield from emit(final=False)
    yield from emit(final=True)


def _row(indices, lengths, ids, types, row_tokens, offset, pad_id, last: bool) -> dict:
    n = len(lengths)
    tokens = int(lengths.sum())
    width = row_tokens if not last else min(row_tokens, -(-tokens // TAIL_TOKENS) * TAIL_TOKENS)
    width = max(width, tokens)
    slots = slot_bucket(n)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    row_ids = np.full(width, pad_id, dtype=np.int32)
    row_ids[:tokens] = ids
    positions = np.full(width, offset, dtype=np.int32)
    positions[:tokens] = np.arange(tokens, dtype=np.int32) - np.repeat(starts, lengths).astype(np.int32) + offset
    doc = np.full(width, slots, dtype=np.int32)  # padding tokens pool into the spare row `slots`
    doc[:tokens] = np.repeat(np.arange(n, dtype=np.int32), lengths)
    # Texts, then the padding as one more text, then empty texts up to the slot count.
    cu = np.full(slots + 2, width, dtype=np.int32)
    cu[0] = 0
    cu[1 : n + 1] = starts + lengths
    row_types = None
    if types is not None:
        row_types = np.zeros(width, dtype=np.int32)
        row_types[:tokens] = types
    lens = np.zeros(slots, dtype=np.int32)
    lens[:n] = lengths
    first = np.zeros(slots, dtype=np.int32)
    first[:n] = starts
    last_tok = np.zeros(slots, dtype=np.int32)
    last_tok[:n] = starts + lengths - 1
    return {"n": n, "tokens": tokens, "width": width, "slots": slots, "indices": indices, "ids": row_ids,
            "positions": positions, "types": row_types, "doc": doc, "cu": cu, "lengths": lens,
            "first": first, "last": last_tok}


# ---------------------------------------------------------------------------------------------- GPU side


class GraphEncoder:
    """Encoder + pooling of one SentenceTransformer as a single (compiled) function over packed rows.

    Created once per model (cached on it) and reused by every `encode` call."""

    def __init__(self, model, compile_mode: str = "reduce-overhead", row_tokens: int = ROW_TOKENS):
        import torch

        from . import mixed, packing

        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"graph encoder compile mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.model = model
        transformer, pooling = model[0], model[1]
        self.device = model.device
        self.cuda = self.device.type == "cuda"
        source = transformer.auto_model
        self.source = source
        self.pooling_mode = pooling.pooling_mode
        self.after = list(model.children())[2:]
        self.position_offset = packing.position_offset(source)
        tokenizer = transformer.tokenizer
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.max_seq_length = int(model.max_seq_length or 512)
        self.row_tokens = max(int(row_tokens), self.max_seq_length)
        # varlen attention needs an upper bound of any text's length; a constant keeps one graph.
        self.max_length = -(-self.max_seq_length // packing.MAX_LENGTH_BUCKET) * packing.MAX_LENGTH_BUCKET
        packing._register()
        source_dtype = next(source.parameters()).dtype
        # On CUDA an fp32 model runs through a bf16 copy (refreshed by refresh()); otherwise the model's
        # own weights, with the packed attention function switched on while encoding (activate()).
        self.owns_copy = self.cuda and source_dtype == torch.float32
        self.encoder = mixed.bf16_copy(source, packing.ATTENTION_NAME) if self.owns_copy else source
        # CUDA graphs need CUDA; on CPU only an explicit "default" / "aot_eager" compiles.
        self.compile_mode = "off" if not self.cuda and compile_mode in ("reduce-overhead", "max-autotune") else compile_mode
        self.uses_types = "token_type_ids" in transformer.tokenizer.model_input_names
        self._fn = self._forward
        if self.compile_mode != "off":
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
            if self.compile_mode == "aot_eager":
                self._fn = torch.compile(self._forward, backend="aot_eager", dynamic=True, fullgraph=True)
            else:
                self._fn = torch.compile(self._forward, dynamic=True,
                                         mode=None if self.compile_mode == "default" else self.compile_mode)
        self.rows = 0
        self.shapes: set[tuple[int, int]] = set()
        self.tokenizer_pool: TokenizerPool | None = None

    def tokenized_chunks(self, texts: list[str], prompt: str, workers: int) -> Iterator:
        """Tokenised chunks of `texts`, longest first (pack_rows' input): in this process when `workers`
        is 0, else by the model's TokenizerPool (started on first use, re-started for another worker count)."""
        chunks = _chunks(texts, workers)
        if not workers:
            tokenize = Tokenize(self.model, texts, prompt)
            return (tokenize(chunk) for chunk in chunks)
        if self.tokenizer_pool is None or self.tokenizer_pool.workers != workers or self.tokenizer_pool.pool is None:
            self.close()
            self.tokenizer_pool = TokenizerPool(self.model, workers)
        tasks = ((chunk, [texts[i] for i in chunk], prompt) for chunk in chunks)
        return self.tokenizer_pool.imap(tasks, window=IN_FLIGHT_PER_WORKER * workers)

    def close(self) -> None:
        """Stop the tokenising processes (a later encode starts them again)."""
        if self.tokenizer_pool is not None:
            self.tokenizer_pool.close()
            self.tokenizer_pool = None

    def refresh(self) -> None:
        """Copy the source model's current weights into the bf16 copy (one cast per encode call)."""
        import torch

        if not self.owns_copy:
            return
        with torch.no_grad():
            for target, source in zip(self.encoder.parameters(), self.source.parameters()):
                target.copy_(source)
            for target, source in zip(self.encoder.buffers(), self.source.buffers()):
                target.copy_(source)

    @contextlib.contextmanager
    def activate(self):
        """While encoding, the model's own transformer (no bf16 copy) uses the packed attention function."""
        from . import packing

        previous = self.encoder.config._attn_implementation
        if previous != packing.ATTENTION_NAME:
            self.encoder.set_attn_implementation(packing.ATTENTION_NAME)
        try:
            yield
        finally:
            if previous != packing.ATTENTION_NAME:
                self.encoder.set_attn_implementation(previous or "sdpa")

    def _forward(self, ids, positions, types, doc, cu, lengths, first, last):
        import torch

        hidden = self.encoder(
            input_ids=ids.unsqueeze(0), position_ids=positions.unsqueeze(0),
            token_type_ids=None if types is None else types.unsqueeze(0),
            cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=self.max_length, max_length_k=self.max_length,
            return_dict=True,
        ).last_hidden_state[0]
        slots = lengths.shape[0]
        if self.pooling_mode == "mean":
            sums = torch.zeros(slots + 1, hidden.shape[-1], dtype=torch.float32, device=hidden.device)
            sums.index_add_(0, doc.long(), hidden.float())
            return sums[:slots] / lengths.clamp(min=1).unsqueeze(1).float()
        index = first if self.pooling_mode == "cls" else last
        return hidden.index_select(0, index.long()).float()

    def run_row(self, row: dict, out, cpu_to_device):
        """Embed one packed row and write its texts' embeddings into `out` (device-side indices)."""
        import torch

        args = [cpu_to_device(row["ids"]), cpu_to_device(row["positions"]),
                cpu_to_device(row["types"]) if (self.uses_types and row["types"] is not None) else None,
                cpu_to_device(row["doc"]), cpu_to_device(row["cu"]), cpu_to_device(row["lengths"]),
                cpu_to_device(row["first"]), cpu_to_device(row["last"])]
        indices = cpu_to_device(row["indices"])
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        pooled = self._fn(*args)[: row["n"]]
        features = {"sentence_embedding": pooled}
        for module in self.after:
            features = module(features)
        out[indices] = features["sentence_embedding"].float()
        self.rows += 1
        self.shapes.add((row["width"], row["slots"]))


def get(model, compile_mode: str, row_tokens: int = ROW_TOKENS) -> GraphEncoder:
    """The model's cached GraphEncoder, or a new one if the mode, row size or max_seq_length changed
    (the varlen length bound and the tokeniser's truncation both follow max_seq_length)."""
    cached = getattr(model, _CACHE_ATTR, None)
    if cached is not None:
        cuda = model.device.type == "cuda"
        mode = "off" if not cuda and compile_mode in ("reduce-overhead", "max-autotune") else compile_mode
        length = int(model.max_seq_length or 512)
        if (cached.compile_mode, cached.row_tokens, cached.max_seq_length) == (mode, max(int(row_tokens), length), length):
            return cached
        cached.close()  # its tokenising processes truncate at the old max_seq_length
    encoder = GraphEncoder(model, compile_mode=compile_mode, row_tokens=row_tokens)
    object.__setattr__(model, _CACHE_ATTR, encoder)  # not a submodule: never saved with the model
    return encoder


def prepare_rows(model, texts: list[str], prompt: str, workers: int = 0,
                 compile_mode: str = "reduce-overhead", row_tokens: int = ROW_TOKENS) -> list[dict]:
    """All packed rows of `texts`, tokenised up front (benchmarks: the GPU side alone, `encode_rows`)."""
    encoder = get(model, compile_mode, row_tokens)
    return list(pack_rows(encoder.tokenized_chunks(texts, prompt, workers), encoder.row_tokens,
                          encoder.position_offset, encoder.pad_id))


def encode_rows(model, rows, count: int, show_progress_bar: bool = False, compile_mode: str = "reduce-overhead",
                row_tokens: int = ROW_TOKENS):
    """Embeddings of `count` texts from packed rows (an iterable: prepared, or streamed by `encode`)."""
    import torch
    from tqdm.auto import tqdm

    encoder = get(model, compile_mode, row_tokens)
    device = model.device
    pinned = device.type == "cuda"

    def to_device(array):
        tensor = torch.from_numpy(array)
        if pinned:
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=pinned)

    was_training = model.training
    model.eval()
    try:
        encoder.refresh()
        with torch.inference_mode(), encoder.activate():
            out = torch.empty(count, model.get_embedding_dimension(), dtype=torch.float32, device=device)
            progress = tqdm(total=count, desc="encode", disable=not show_progress_bar)
            for row in rows:
                encoder.run_row(row, out, to_device)
                progress.update(row["n"])
            progress.close()
    finally:
        model.train(was_training)
    return out


def encode(model, texts: list[str], prompt: str, workers: int, show_progress_bar: bool,
           compile_mode: str = "reduce-overhead", row_tokens: int = ROW_TOKENS):
    """Embeddings (float32, input order) of `texts` with `prompt`, through the packed-row graph path:
    tokenising processes (kept across calls), packing in this process and the compiled encoder overlap."""
    import torch

    encoder = get(model, compile_mode, row_tokens)
    if not texts:
        return torch.empty(0, model.get_embedding_dimension())
    rows = pack_rows(encoder.tokenized_chunks(texts, prompt, workers), encoder.row_tokens, encoder.position_offset,
                     encoder.pad_id)
    out = encode_rows(model, rows, len(texts), show_progress_bar, compile_mode, row_tokens)
    log.info("graph encoder: %d texts in packed rows of %d tokens (compile %s, bf16 copy %s); row shapes so far %s",
             len(texts), encoder.row_tokens, encoder.compile_mode, encoder.owns_copy, sorted(encoder.shapes))
    return out
