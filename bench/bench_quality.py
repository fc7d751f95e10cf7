"""Generalisation benchmark: does fine-tuning help queries that are not the training template?

    make bench-quality                     # bundled MedQuAD sample, CPU (GPU when present)
    make bench-quality DATA=path/to/medquad.jsonl.gz FRENCH=path/to/frenchmedmcqa.jsonl.gz
    make train-best DATA=<file or URI>     # the `chosen` arm alone, its model saved; last line `model: <path>`

1. medembed.prep.holdout.build sets whole groups aside (leave-source-out sources, held-out probe groups,
   dev groups) and writes the rest as the training side;
2. medembed.prep.stage.prepare preps the training side exactly as the pipeline does (dedup, split, mining);
3. medembed.train.recipe.train trains each arm ("main": the local profile's training settings before
   issue 10; "local": the local profile now; "chosen": augmentation + a WiSE-FT weight chosen on the dev
   probes; or any arms from --arms-json);
4. arms with a WiSE-FT grid choose the mixing weight on the dev probes (medembed.evaluate.quality.choose_alpha);
5. base and every arm are scored on every probe and dim (NDCG@10, paired bootstrap intervals).

Writes bench/results/quality-{cpu,h200}.json and docs/QUALITY.md (--markdown). Needs nothing outside
the repository: DATA and FRENCH are ordinary inputs (a file, a folder or an s3:// URI).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medembed.artifacts import TRAINING_INFO, TrainingInfo  # noqa: E402
from medembed.config import BUNDLED_MEDQUAD_SAMPLE, LOCAL, EvalConfig  # noqa: E402
from medembed.evaluate import quality  # noqa: E402
from medembed.models import configure_torch, load_model, setup_logging  # noqa: E402
from medembed.prep import holdout, stage as prep_stage  # noqa: E402
from medembed.prep.ingest import read_records, resolve_local_path  # noqa: E402
from medembed.train import recipe  # noqa: E402
from medembed.train.wiseft import mix_into  # noqa: E402

log = logging.getLogger("bench_quality")
ROOT = Path(__file__).resolve().parents[1]
ALPHA_CURVE = (0.3, 0.5, 0.7, 1.0)
WISE_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# An arm's "train" overrides apply to the local profile's training settings *before* issue 10 (no
# augmentation, no mixing), as in phase 1, so arm files keep their meaning; "profile": "local" starts from
# the local profile as it is now instead.
NO_METHODS = {"augment": (), "augment_rate": 0.0, "wise_alpha": 1.0}
AUGMENT = ["stripped", "keywords", "sentence"]
# The local profile's training settings before issue 10.
MAIN = {"name": "main", "train": {}}
# Main's fine-tuned model, mixed with the base at the WiSE-FT weight chosen on the dev probes (ablation).
MAIN_WISE = {"name": "main+wise", "reuse_model": "main", "train": {}, "wise_grid": list(WISE_GRID)}
# The local profile as it is now (`make run`): augmentation rate 1.0, WiSE-FT weight 0.4 fixed (no dev probes there).
LOCAL_ARM = {"name": "local", "profile": "local", "train": {}}
# What `make train-best` runs: augmentation (rate 0.5) + the WiSE-FT weight chosen on the dev probes
# (docs/QUALITY.md gives the evidence). Trained unmixed; the mix is chosen afterwards.
CHOSEN = {"name": "chosen", "train": {"augment": AUGMENT, "augment_rate": 0.5}, "wise_grid": list(WISE_GRID)}
PRESETS = {"main": MAIN, "main+wise": MAIN_WISE, "local": LOCAL_ARM, "chosen": CHOSEN}


def _no_language_tagging() -> None:
    """Machines without py3langid (the GPU box): every row is tagged 'und' (languages are irrelevant here)."""
    try:
        import py3langid  # noqa: F401
    except ImportError:
        prep_stage.tag_languages = lambda pairs, chars: [p.__setitem__("language", "und") for p in pairs]


def read_input(uri: str, work: Path) -> list[dict]:
    """Every record of a file, folder or s3:// URI in a format prep reads (JSONL, CSV, Parquet, MedQuAD XML)."""
    path = resolve_local_path(uri, work / "download")
    return [record for _, _, record in read_records(path)]


def prep(train_side: Path, out: Path, base_model: str, seq: int, num_negatives: int, max_pairs: int, seed: int):
    """The product's prep on the training side; its test split is the `in_template_prep` probe (what the
    product's own evaluation reports). Its built-in probes are off here: the hold-out probes replace them."""
    config = replace(LOCAL.data, data_uri=str(train_side), num_negatives=num_negatives, max_train_pairs=max_pairs,
                     test_fraction=0.1, dev_fraction=0.02, seed=seed, eval_distractors=200, shift_probes=())
    train_dir, eval_dir = out / "train", out / "eval"
    stats = prep_stage.prepare(config, train_dir, eval_dir, model=base_model, max_seq_length=seq, work_dir=out / "work")
    return train_dir, eval_dir, stats


def run(args) -> dict:
    setup_logging()
    _no_language_tagging()
    device = configure_torch()
    import torch

    started = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-quality-"))
    data_uri = args.data or BUNDLED_MEDQUAD_SAMPLE
    rows = read_input(data_uri, work)
    probe_config = holdout.HoldoutConfig(max_queries=args.max_queries, max_dev_queries=args.max_dev_queries, seed=args.seed,
                                      max_probe_rows=args.max_probe_rows, max_lso_rows=args.max_lso_rows,
                                      max_dev_rows=args.max_dev_rows,
                                      holdout_sources=tuple(x for x in args.holdout_sources.split(",") if x))
    probe_set = holdout.build(rows, work / "probeset", probe_config)
    collections = dict(probe_set.collections)
    if args.french:
        french_rows = resolve_local_path(args.french, work / "download")
        collections["french"] = holdout.french_probe(french_rows, work / "probeset" / "probes" / "french",
                                                     max_queries=args.max_queries, seed=args.seed)
    log.info("probes: %s", json.dumps(probe_set.counts))
    t_probes = time.perf_counter() - started

    arms = json.loads(Path(args.arms_json).read_text()) if args.arms_json else [PRESETS[a] for a in args.arms.split(",")]
    base_ref = args.base_model
    dims = sorted({int(d) for d in args.dims.split(",")}, reverse=True)
    results: dict = {
        "bench": "quality", "layout": "stage packages (issue 10 phase 2)", "data": data_uri, "base_model": base_ref,
        "device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "torch_threads": torch.get_num_threads(), "host": platform.node(), "dims": dims,
        "probe_counts": probe_set.counts, "probe_config": asdict(probe_config),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "arms": {}, "seconds": {"probes": round(t_probes, 1)},
    }
    preps: dict = {}
    bases: dict = {}
    eval_speed = {"packed_attention": "off", "compile_layers": "off"}
    for arm in arms:
        try:
            run_arm(arm, args, results, preps, bases, probe_set, collections, base_ref, dims, device, work, eval_speed, started)
        except Exception as exc:  # noqa: BLE001 - a sweep keeps going; the failure is recorded
            log.exception("arm %s failed", arm.get("name"))
            results["arms"][arm.get("name", "?")] = {"arm": arm, "error": repr(exc)}
    if args.markdown:
        write_markdown(results, Path(args.markdown))
    return results


def data_label(results: dict) -> str:
    """Names the generated block: data, device and the arms, so runs on other data or arms keep their own block."""
    data_name = "bundled-sample" if results["data"] == BUNDLED_MEDQUAD_SAMPLE else Path(results["data"].rstrip("/")).name.split(".")[0]
    return results.get("label") or f"{data_name}-{results['device']}-{'+'.join(results['arms'])}"


def write_markdown(results: dict, path: Path) -> None:
    """Replace this data's block of generated tables in `path` (between markers), keeping the rest of the
    document; a new file gets the block alone."""
    label = data_label(results)
    start, end = f"<!-- bench-quality:{label}:start -->", f"<!-- bench-quality:{label}:end -->"
    block = f"{start}\n{markdown(results)}\n{end}"
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = (text.rstrip() + "\n\n" if text else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run_arm(arm, args, results, preps, bases, probe_set, collections, base_ref, dims, device, work, eval_speed, started):
    """Prep (once per negatives setting), base scores (once per max_seq_length), train, select, score one arm."""
    name = arm["name"]
    start = LOCAL.train if arm.get("profile") == "local" else replace(LOCAL.train, **NO_METHODS)
    train_cfg = replace(start, base_model=base_ref, eval_steps=0, matryoshka_dims=tuple(dims),
                        packed_attention="off", compile_layers="off",
                        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in arm.get("train", {}).items()})
    if arm.get("wise_grid") and train_cfg.wise_alpha < 1:
        raise ValueError(f"arm {name}: a WiSE-FT grid chooses the mix of an unmixed model; leave train.wise_alpha at 1")
    seq = train_cfg.max_seq_length
    negatives = int(arm.get("num_negatives", 0))
    t0 = time.perf_counter()
    if negatives not in preps:
        preps[negatives] = prep(Path(probe_set.train_side), work / f"prep-neg{negatives}", base_ref, seq, negatives,
                                args.max_pairs, args.seed)
        results["seconds"][f"prep_neg{negatives}"] = round(time.perf_counter() - t0, 1)
    train_dir, eval_dir, stats = preps[negatives]
    if seq not in bases:
        t0 = time.perf_counter()
        probe_collections = quality.load_collections({**collections, "in_template_prep": str(eval_dir)})
        dev_collections = quality.load_collections(probe_set.dev_collections)
        base = load_model(base_ref, max_seq_length=seq, device=device)
        scorer = quality.ProbeScorer(probe_collections, dims, args.batch_size, **eval_speed)
        dev_scorer = quality.ProbeScorer(dev_collections, dims, args.batch_size, **eval_speed)
        bases[seq] = {"scorer": scorer, "dev_scorer": dev_scorer, "pq": scorer.per_query(base),
                      "dev_pq": dev_scorer.per_query(base),
                      "state": {k: v.detach().clone() for k, v in base.state_dict().items()}}
        del base
        results["seconds"][f"base_eval_seq{seq}"] = round(time.perf_counter() - t0, 1)
    b = bases[seq]
    model_dir = work / "models" / arm.get("reuse_model", name)
    callbacks = []
    if arm.get("early_every"):
        callbacks.append(quality.dev_probe_callback(b["dev_scorer"], b["dev_pq"], int(arm["early_every"])))
    t0 = time.perf_counter()
    if arm.get("reuse_model") or (args.reuse_trained and (model_dir / "arm.json").exists()
                                  and json.loads((model_dir / "arm.json").read_text()) == arm.get("train", {})):
        # Same training as an earlier arm: only the selection differs.
        info = TrainingInfo.read(model_dir)
    else:
        with tempfile.TemporaryDirectory(dir=work) as scratch:
            info = recipe.train(train_dir, model_dir, train_cfg, Path(scratch), callbacks=callbacks)
        (model_dir / "arm.json").write_text(json.dumps(arm.get("train", {})))
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = load_model(str(model_dir), max_seq_length=seq, device=device)
    entry: dict = {"arm": arm, "train_config": {k: v for k, v in asdict(train_cfg).items() if k in arm.get("train", {})},
                   "methods": {k: getattr(train_cfg, k) for k in ("augment", "augment_rate", "wise_alpha", "matryoshka_weights")},
                   "train_pairs": stats.train_pairs, "train_rows": info.train_pairs + info.augmented_rows, "steps": info.steps,
                   "train_loss": round(info.train_loss, 4), "num_negatives": negatives,
                   "learning_rate": train_cfg.learning_rate, "epochs": train_cfg.epochs, "max_seq_length": seq}
    if callbacks:
        entry["early_stopping"] = {"kept_step": callbacks[0].best["step"], "history": callbacks[0].history}
    if args.alpha_curve and arm.get("wise_grid"):
        # Analysis only (never used to choose): every probe at a few mixing weights.
        tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
        curve = {}
        for alpha in ALPHA_CURVE:
            model.load_state_dict(tuned)
            if alpha < 1:
                mix_into(model, b["state"], alpha)
            pq = b["scorer"].per_query(model)
            curve[str(alpha)] = {n: quality.relative_changes(b["pq"], pq, [n], dims) for n in b["scorer"].collections}
            curve[str(alpha)] = {n: {d: round(100 * v, 2) for (_, d), v in rel.items()} for n, rel in curve[str(alpha)].items()}
        model.load_state_dict(tuned)
        entry["alpha_curve"] = curve
    if arm.get("wise_grid"):
        alpha, trials = quality.choose_alpha(model, b["state"], b["dev_scorer"], b["dev_pq"], arm["wise_grid"])
        entry["wise_alpha"], entry["wise_trials"] = alpha, trials
    elif train_cfg.wise_alpha < 1:
        entry["wise_alpha"] = train_cfg.wise_alpha
    t_select = time.perf_counter() - t0
    if args.save_model:
        saved = Path(args.save_model).resolve() / name
        model.save(str(saved))
        info_json = json.loads((model_dir / TRAINING_INFO).read_text())
        info_json["wise_alpha"] = entry.get("wise_alpha", train_cfg.wise_alpha)
        (saved / TRAINING_INFO).write_text(json.dumps(info_json, indent=2))
        entry["model_dir"] = str(saved)
    t0 = time.perf_counter()
    pq = b["scorer"].per_query(model)
    summaries = quality.compare(b["pq"], pq, b["scorer"].collections, dims, EvalConfig())
    entry["ndcg@10"] = quality.ndcg_table(summaries, dims)
    shifted = [n for n in b["scorer"].collections if n not in ("template", "in_template_prep")]
    entry["shifted_summary"] = quality.selection_score(b["pq"], pq, shifted, dims)
    entry["dev_summary"] = quality.selection_score(b["dev_pq"], b["dev_scorer"].per_query(model),
                                                   b["dev_scorer"].collections, dims)
    entry["seconds"] = {"train": round(t_train, 1), "select": round(t_select, 1), "eval": round(time.perf_counter() - t0, 1)}
    results["arms"][name] = entry
    log.info("arm %s: shifted %s, seconds %s", name, entry["shifted_summary"], entry["seconds"])
    del model
    results["seconds"]["total"] = round(time.perf_counter() - started, 1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


def _cell(row: dict) -> str:
    mark = "*" if row["significant"] else ""
    return f"{row['model']:.4f} ({row['rel_pct']:+.1f}%, Δ [{row['low']:+.3f}, {row['high']:+.3f}]{mark})"


PROBE_NOTES = {
    "template": "held-out groups, their own templated questions (in-template)",
    "in_template_prep": "prep's own held-out split of the training side (what the product's evaluation measures)",
    "lso": "leave-source-out: questions and answers of sources never trained on",
    "keyword": "focus + lay keyword for the question type, shuffled",
    "topic": "the focus alone (relevant: every answer about it; close to the `stripped` augmentation)",
    "lay": "consumer question frames with lay synonyms",
    "misspell": "the question lower-cased, no '?', typos",
    "para": "question paraphrase: lay query -> held-out questions (forgetting)",
    "halves": "general text: second half of an answer -> its first half (forgetting)",
    "french": "FrenchMedMCQA: question -> correct options (multilingual bases only)",
}


def markdown(results: dict) -> str:
    dims = results["dims"]
    lines = [f"### `{data_label(results)}` (generated by bench/bench_quality.py)", "",
             f"Data: `{results['data']}`; base `{results['base_model']}`; device {results['device']}"
             f"{' (' + results['gpu'] + ')' if results.get('gpu') else ''}, torch threads {results['torch_threads']}; "
             f"total {results['seconds'].get('total', 0) / 60:.1f} min. Command: `{results['command']}`.", "",
             "Cells: fine-tuned NDCG@10 (relative change vs base, Δ 95% paired bootstrap interval over queries; "
             "* = excludes 0). Base NDCG@10 in the first column. Probes are built by `medembed/prep/holdout.py` from groups "
             "that training never sees; `dev_*` probes (other groups) are the only ones used for selection.", ""]
    sides = results["probe_counts"]
    lines += [f"Rows: {sides['rows']}, sides {sides['sides']}; held-out sources {sides['holdout_sources']}; "
              f"queries per probe {sides['queries']}.", ""]
    for name, arm in results["arms"].items():
        if "error" in arm:
            lines += [f"#### Arm `{name}`", "", f"Failed: {arm['error']}", ""]
            continue
        extra = []
        if "wise_alpha" in arm:
            extra.append(f"WiSE-FT alpha {arm['wise_alpha']} " + ("(chosen on dev probes)" if arm.get("wise_trials") else "(fixed)"))
        if "early_stopping" in arm:
            extra.append(f"early stopping kept step {arm['early_stopping']['kept_step']}")
        lines += [f"#### Arm `{name}`", "",
                  f"Settings: `{json.dumps(arm['arm'])}`; lr {arm['learning_rate']}, epochs {arm['epochs']}, "
                  f"seq {arm['max_seq_length']}, {arm['train_pairs']} pairs ({arm['train_rows']} rows with augmentation), "
                  f"{arm['steps']} steps, hard negatives {arm['num_negatives']}. {'; '.join(extra)}", "",
                  f"Timings (s): {arm['seconds']}. Shifted probes: mean {100 * arm['shifted_summary']['mean_rel']:+.1f}%, "
                  f"worst {100 * arm['shifted_summary']['worst_rel']:+.1f}% (relative NDCG@10 over probes x dims).", "",
                  "| probe | " + " | ".join(f"base @{d}" for d in dims) + " | " + " | ".join(f"fine-tuned @{d}" for d in dims) + " |",
                  "|---" * (1 + 2 * len(dims)) + "|"]
        for probe, rows in arm["ndcg@10"].items():
            lines.append(f"| {probe} | " + " | ".join(f"{rows[str(d)]['base']:.4f}" for d in dims) + " | "
                         + " | ".join(_cell(rows[str(d)]) for d in dims) + " |")
        lines.append("")
        if arm.get("wise_trials"):
            lines += ["Dev-probe selection (the only thing that chose alpha): " + ", ".join(
                f"{t['alpha']:g}: mean {100 * t['mean_rel']:+.2f}, worst {100 * t['worst_rel']:+.2f}" for t in arm["wise_trials"])
                      + " (relative NDCG@10 %, dev probes x dims; best mean among worst >= 0, else best worst).", ""]
        if arm.get("alpha_curve"):
            lines += ["WiSE-FT curve on the reported probes (analysis only; relative NDCG@10 %, dims " + "/".join(map(str, dims)) + "):", "",
                      "| alpha | " + " | ".join(arm["alpha_curve"][next(iter(arm["alpha_curve"]))]) + " |",
                      "|---" * (1 + len(arm["alpha_curve"][next(iter(arm["alpha_curve"]))])) + "|"]
            for alpha, probes_rel in arm["alpha_curve"].items():
                lines.append(f"| {alpha} | " + " | ".join("/".join(f"{v:+.1f}" for v in rel.values()) for rel in probes_rel.values()) + " |")
            lines.append("")
    lines += ["Probes: " + "; ".join(f"`{k}`: {v}" for k, v in PROBE_NOTES.items()) + ".", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("DATA") or None,
                        help="question/answer rows: a file, folder or s3:// URI prep can read (default: the bundled sample)")
    parser.add_argument("--french", default=None, help="FrenchMedMCQA JSONL(.gz) file or s3:// URI, for a multilingual base")
    parser.add_argument("--base-model", default=LOCAL.train.base_model)
    parser.add_argument("--dims", default=",".join(map(str, LOCAL.train.matryoshka_dims)), help="Matryoshka dims trained and scored")
    parser.add_argument("--arms", default="main,local,chosen", help=f"comma-separated presets: {sorted(PRESETS)}")
    parser.add_argument("--arms-json", default=None, help="a JSON list of arms (name, train overrides, wise_grid, ...)")
    parser.add_argument("--max-pairs", type=int, default=None,
                        help="cap on training pairs (0 = all of the training side; default: the local profile's "
                             f"{LOCAL.data.max_train_pairs} on the bundled sample, all with --data)")
    parser.add_argument("--max-queries", type=int, default=300)
    parser.add_argument("--max-dev-queries", type=int, default=120)
    parser.add_argument("--max-probe-rows", type=int, default=700, help="held-out rows behind the shared corpus (0 = all)")
    parser.add_argument("--max-lso-rows", type=int, default=400, help="held-out-source rows in it (0 = all)")
    parser.add_argument("--max-dev-rows", type=int, default=300, help="dev-side rows behind the dev probes (0 = all)")
    parser.add_argument("--holdout-sources", default=",".join(holdout.DEFAULT_HOLDOUT_SOURCES),
                        help="sources held out of training for the leave-source-out probe (comma-separated; '' = none)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--alpha-curve", action="store_true", help="also score every WiSE-FT weight on the probes (analysis only)")
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--reuse-trained", action="store_true",
                        help="with --work from an earlier run: reuse a model trained there with the same settings")
    parser.add_argument("--save-model", default=None, help="write each arm's final model (after WiSE-FT) under this folder")
    parser.add_argument("--render", default=None, help="only (re)write --markdown from this results JSON")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        write_markdown(results, Path(args.markdown or ROOT / "docs" / "QUALITY.md"))
        return results
    if args.out is None:
        import torch

        args.out = str(ROOT / "bench" / "results" / f"quality-{'h200' if torch.cuda.is_available() else 'cpu'}.json")
    if args.max_pairs is None:
        args.max_pairs = 0 if args.data else LOCAL.data.max_train_pairs
    results = run(args)
    print(json.dumps({name: {"shifted": arm.get("shifted_summary"), "seconds": arm.get("seconds"), "error": arm.get("error")}
                      for name, arm in results["arms"].items()}))
    for name, arm in results["arms"].items():
        if "ndcg@10" in arm:
            print(f"\n{name}: NDCG@10 base -> fine-tuned (relative change) per probe, dims {results['dims']}")
            for probe, rows in arm["ndcg@10"].items():
                print(f"  {probe:17s} " + "  ".join(f"{r['base']:.4f}->{r['model']:.4f} ({r['rel_pct']:+.1f}%{'*' if r['significant'] else ''})"
                                               for r in rows.values()))
    saved = [arm["model_dir"] for arm in results["arms"].values() if arm.get("model_dir")]
    if saved:
        print(f"model: {saved[-1]}")
    return results


if __name__ == "__main__":
    main()
