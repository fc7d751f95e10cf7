"""The evaluation stage: base, candidate and the current champion at every Matryoshka dim x storage
precision, on the same evaluation data in the same run."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from .. import diskspace
from ..artifacts import RESULTS_FILE, TrainingInfo
from ..config import PipelineConfig, RegistryConfig
from ..models import setup_logging
from ..registry import ModelRegistry, RegistryError
from ..storage import StorageError, open_store
from . import report
from .evaluator import Champion, evaluate
from .tables import comparison_text

log = logging.getLogger(__name__)


def run(config: PipelineConfig, eval_dir: Path, model_dir: Path, results_dir: Path) -> dict:
    """results.json plus the HTML and Markdown reports (report.html, report.md) in `results_dir`.
    Base and candidate are encoded at the training max_seq_length, so neither sees more text."""
    setup_logging()
    info = TrainingInfo.read(Path(model_dir))
    results_dir = Path(results_dir)
    with diskspace.explained("evaluation", {"the results output": results_dir, "scratch space (TMPDIR)": tempfile.gettempdir()},
                             "No partial results were kept; free space there or give the task a larger disk, then run again",
                             cleanup=diskspace.remover(results_dir)):
        with tempfile.TemporaryDirectory() as work:
            champion = pull_champion(config.registry, Path(work))
            results = evaluate(Path(eval_dir), str(model_dir), info.base_model, info.matryoshka_dims, info.query_prompt,
                               info.passage_prompt, config.eval, max_seq_length=info.max_seq_length or None,
                               champion=champion)
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        report.write_reports(results, results_dir)
    log.info("NDCG@10 base -> fine-tuned: %s", ", ".join(
        f"dim {d} {results['base'][str(d)]['ndcg@10']:.4f} -> {results['finetuned'][str(d)]['ndcg@10']:.4f}" for d in results["dims"]))
    log.debug("evaluation:\n%s", comparison_text(results))
    return results


def pull_champion(settings: RegistryConfig, work_dir: Path) -> Champion | None:
    """The current champion, downloaded and checksum-verified; None when there is none. A champion
    that cannot be pulled is returned with its error: the gate then refuses to promote over it."""
    try:
        registry = ModelRegistry(open_store(settings.registry_uri, create=False), settings.model_name)
        version = registry.alias()
    except StorageError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    if version is None:
        return None
    try:
        path = registry.pull(version, work_dir / f"champion-v{version}")
        info = TrainingInfo.read(path)
        return Champion(version, str(path), list(info.matryoshka_dims), info.max_seq_length or None)
    except (RegistryError, StorageError, FileNotFoundError, ValueError) as exc:
        log.warning("the champion v%d cannot be scored: %s", version, exc)
        return Champion(version, "", [], error=str(exc))
