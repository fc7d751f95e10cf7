"""The promotion gate: whether a registered candidate becomes the champion."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..evaluate.metrics import GATE_METRIC

log = logging.getLogger(__name__)


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)


def decide_promotion(
    results: dict, champion_results: dict | None = None, min_gain: float = 0.0, metric: str = GATE_METRIC
) -> GateDecision:
    """Promote only if the fine-tuned model beats the base at every dim by more than `min_gain`,
    and is no worse than the current champion at every dim when both were scored on the same data."""
    reasons: list[str] = []
    for dim in results["dims"]:
        key = str(dim)
        tuned, base = results["finetuned"][key][metric], results["base"][key][metric]
        if not tuned > base + min_gain:
            reasons.append(f"dim {dim}: {metric} {tuned:.4f} does not beat base {base:.4f} by > {min_gain}")
    if champion_results is not None:
        if champion_results.get("eval_fingerprint") != results.get("eval_fingerprint"):
            log.info("champion was scored on other evaluation data; comparing against the base model only")
        else:
            for dim in results["dims"]:
                key = str(dim)
                champ = champion_results.get("finetuned", {}).get(key, {}).get(metric)
                tuned = results["finetuned"][key][metric]
                if champ is not None and tuned < champ:
                    reasons.append(f"dim {dim}: {metric} {tuned:.4f} is below the champion's {champ:.4f}")
    return GateDecision(promote=not reasons, reasons=reasons)
