"""The evaluation stage: base vs fine-tuned at every Matryoshka dim x storage precision."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..artifacts import RESULTS_FILE, TrainingInfo
from ..config import PipelineConfig
from ..models import setup_logging
from . import report
from .evaluator import evaluate
from .tables import comparison_text

log = logging.getLogger(__name__)


def run(config: PipelineConfig, eval_dir: Path, model_dir: Path, results_dir: Path) -> dict:
    """results.json plus the HTML and Markdown reports (report.html, report.md) in `results_dir`.
    Both models are encoded at the training max_seq_length, so neither sees more text."""
    setup_logging()
    info = TrainingInfo.read(Path(model_dir))
    results = evaluate(Path(eval_dir), str(model_dir), info.base_model, info.matryoshka_dims, info.query_prompt,
                       info.passage_prompt, config.eval, max_seq_length=info.max_seq_length or None)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    report.write_reports(results, results_dir)
    log.info("evaluation:\n%s", comparison_text(results))
    return results
