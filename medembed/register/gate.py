"""The promotion gate: whether a registered candidate becomes the champion.

It reads only what the evaluation stage measured in this run, on one evaluation set: the candidate,
the base model and the current champion, with paired bootstrap intervals over queries. At every
gated dim (registry.gate_dims, default all) the candidate must
- beat the base model: the lower end of the NDCG@10 interval vs base above registry.min_ndcg_gain;
- not be significantly worse than the champion (interval vs champion entirely below 0);
- not be significantly worse than the base model on any guard collection (extra collections:
  queries a team collected, shifted probes), so a gain on the training data's own template cannot
  hide a loss elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import RegistryConfig
from ..evaluate.metrics import GATE_METRIC
from ..evaluate.search import FLOAT32


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    # One row per comparison: {"collection", "dim", "against", "delta", "low", "high", "rule", "passed"}.
    checks: list[dict] = field(default_factory=list)
    # The champion the candidate was compared with (None: there was none); promotion is a
    # compare-and-swap against it.
    champion_version: int | None = None
    gated_dims: list[int] = field(default_factory=list)


def decide_promotion(results: dict, settings: RegistryConfig) -> GateDecision:
    dims = [int(d) for d in (settings.gate_dims or results["dims"])]
    missing = sorted(set(dims) - set(int(d) for d in results["dims"]))
    decision = GateDecision(promote=False, gated_dims=dims)
    if missing:
        decision.reasons.append(f"registry.gate_dims {missing} were not evaluated (dims: {results['dims']})")
        return decision

    def check(collection: str, dim: int, against: str, delta: dict | None, passed: bool, rule: str, reason: str) -> None:
        row = {"collection": collection, "dim": dim, "against": against, "rule": rule, "passed": passed,
               **({k: delta[k] for k in ("delta", "low", "high")} if delta else {})}
        decision.checks.append(row)
        if not passed:
            decision.reasons.append(reason)

    def interval(d: dict) -> str:
        return f"{d['delta']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"

    for dim in dims:
        vs_base = results["deltas"][str(dim)][FLOAT32][GATE_METRIC]
        check("main", dim, "base", vs_base, vs_base["low"] > settings.min_ndcg_gain, f"low > {settings.min_ndcg_gain}",
              f"dim {dim}: {GATE_METRIC} vs base {interval(vs_base)}: the interval's lower end is not above "
              f"registry.min_ndcg_gain={settings.min_ndcg_gain}")

    champion = results.get("champion")
    if champion:
        decision.champion_version = champion["version"]
        if champion.get("error"):
            decision.reasons.append(f"the champion v{champion['version']} could not be scored ({champion['error']}); "
                                    "a candidate is never promoted over a champion it was not compared with")
        for dim in dims if not champion.get("error") else []:
            vs_champion = champion["deltas"].get(str(dim), {}).get(GATE_METRIC)
            if vs_champion is None:
                check("main", dim, f"champion v{champion['version']}", None, True, "not comparable",
                      "")  # the champion has no embedding of this size: nothing to compare
                continue
            check("main", dim, f"champion v{champion['version']}", vs_champion, vs_champion["high"] >= 0, "high >= 0",
                  f"dim {dim}: {GATE_METRIC} vs the champion v{champion['version']} {interval(vs_champion)}: "
                  "significantly worse")

    for name, collection in sorted(results.get("collections", {}).items()):
        if not collection.get("guard", True):
            continue
        for dim in dims:
            vs_base = collection["deltas"][str(dim)][FLOAT32][GATE_METRIC]
            check(name, dim, "base", vs_base, vs_base["high"] >= 0, "high >= 0",
                  f"guard collection {name!r}, dim {dim}: {GATE_METRIC} vs base {interval(vs_base)}: significantly worse")

    decision.reasons = [r for r in decision.reasons if r]
    decision.promote = not decision.reasons
    return decision


def decision_markdown(decision: GateDecision) -> str:
    """The decision and every comparison behind it, for the KFP UI, the manifest's readers and the card."""
    head = "**Promoted to champion.**" if decision.promote else "**Not promoted.** " + "; ".join(decision.reasons)
    lines = [head, "", f"Gated dims: {', '.join(map(str, decision.gated_dims))}. NDCG@10, float32, "
             "Δ with a 95% paired bootstrap interval over queries.", "",
             "| collection | dim | against | Δ [interval] | rule | passed |", "| --- | ---: | --- | --- | --- | --- |"]
    for row in decision.checks:
        delta = f"{row['delta']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}]" if "delta" in row else "–"
        lines.append(f"| {row['collection']} | {row['dim']} | {row['against']} | {delta} | {row['rule']} | "
                     f"{'yes' if row['passed'] else '**no**'} |")
    return "\n".join(lines) + "\n"
