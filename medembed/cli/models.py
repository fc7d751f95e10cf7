"""`medembed models`: the model registry from the command line.

    medembed models list [NAME]                          versions, aliases, gate outcome, headline NDCG@10
    medembed models show NAME[@ALIAS|:N]                 metrics per dim, gate decision, lineage, index contract
    medembed models pull NAME[@ALIAS|:N] --to DIR        download, every file checked against its SHA-256
    medembed models promote NAME:N [--alias champion]    point an alias at a version
    medembed models rollback NAME [--alias champion]     the alias goes back to the version it held before
    medembed models diff A B                             per-dim NDCG@10 of two versions, lineage side by side
    medembed models import-base NAME_OR_DIR URI          mirror a base model into MinIO (once, with hub access)

NAME alone means NAME@champion. Every command takes `--json` (one JSON document on stdout, for scripts).
The registry is the configuration's `registry.registry_uri`: `--profile local` (default: ./registry) or
`--profile cluster` (s3://medembed-registry/models), or `--set registry.registry_uri=s3://bucket/prefix`;
MinIO's endpoint and keys come from MINIO_ENDPOINT / MINIO_ACCESS_KEY / MINIO_SECRET_KEY.

Exit codes: 0 done; 1 the registry refused (unknown model, version or alias, a damaged registry file, a
checksum mismatch, a target folder that is not empty); 2 usage (a malformed reference, a bad --set);
5 the store cannot be reached or read. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import json
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from ..config import MODEL_NAME_PATTERN, ConfigError, load_config
from ..evaluate.metrics import GATE_METRIC
from ..evaluate.search import FLOAT32
from ..lineage import COMPARED
from ..registry import CHAMPION, ModelRegistry, RegistryError
from ..storage import StorageError, open_store

EXIT_OK, EXIT_REGISTRY, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 5
ALIAS_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
_REF = re.compile(rf"(?P<name>{MODEL_NAME_PATTERN})(?:@(?P<alias>{ALIAS_PATTERN})|:v?(?P<version>\d+))?")
REF_HELP = "NAME, NAME@ALIAS or NAME:N (e.g. medical-embeddings@champion, medical-embeddings:3)"


class UsageError(ValueError):
    """A malformed command line: exit 2."""


# ---------------------------------------------------------------- references


@dataclass(frozen=True)
class Ref:
    name: str
    alias: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def parse_ref(text: str) -> Ref:
    match = _REF.fullmatch(text.strip())
    if not match:
        raise UsageError(f"{text!r} is not a model reference: use {REF_HELP}")
    version = match.group("version")
    return Ref(match.group("name"), match.group("alias"), int(version) if version is not None else None)


def _alias_name(text: str) -> str:
    if not re.fullmatch(ALIAS_PATTERN, text):
        raise UsageError(f"--alias {text!r}: use letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    return text


# ---------------------------------------------------------------- reading the registry


class Registry:
    """The registry of one configuration: opens models, resolves references, reads what the CLI shows."""

    def __init__(self, uri: str, default_name: str):
        self.default_name = default_name
        # Read-only commands must never create a bucket (a typo would leave one behind).
        self.store = open_store(uri, create=False)
        self.uri = self.store.uri("").rstrip("/") or uri  # a local folder as an absolute path

    def model_names(self) -> list[str]:
        """Models with at least one complete version."""
        names = set()
        for key in self.store.list(""):
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "manifest.json" and re.fullmatch(r"v\d{4,}", parts[1]):
                names.add(parts[0])
        return sorted(names)

    def open(self, name: str) -> ModelRegistry:
        registry = ModelRegistry(self.store, name)
        if not registry.versions():
            others = [n for n in self.model_names() if n != name]
            where = f"no model named {name!r} in the registry {self.uri}"
            raise RegistryError(where + (f"; models there: {', '.join(others)}" if others else
                                         "; it holds no model: check --profile / --set registry.registry_uri"))
        return registry

    def aliases(self, registry: ModelRegistry) -> dict[str, int | None]:
        names = set()
        for key in self.store.list(f"{registry.model_name}/aliases/"):
            parts = key.split("/")
            if len(parts) == 4:
                names.add(parts[2])
        return {name: registry.alias(name) for name in sorted(names)}

    def resolve(self, registry: ModelRegistry, ref: Ref) -> int:
        if ref.version is not None:
            return registry.resolve(str(ref.version))
        alias = ref.alias or CHAMPION
        version = registry.alias(alias)
        if version is None:
            known = {a: v for a, v in self.aliases(registry).items() if v is not None}
            raise RegistryError(
                f"{registry.model_name}: alias {alias!r} points at no version"
                + (f" (aliases: {', '.join(f'{a} -> v{v}' for a, v in known.items())})" if known else "")
                + f"; versions: {', '.join(map(str, registry.versions()))} (name one as {registry.model_name}:N)")
        return version


def _round(value, digits: int = 4):
    return round(float(value), digits) if value is not None else None


def _interval(entry: dict | None) -> dict | None:
    if not entry:
        return None
    return {"delta": _round(entry["delta"]), "low": _round(entry["low"]), "high": _round(entry["high"])}


def dim_rows(results: dict) -> list[dict]:
    """NDCG@10 per dim (float32): base, fine-tuned, Δ vs base with its paired bootstrap interval, and Δ
    vs the champion this version was scored beside (same run, same evaluation data)."""
    champion = results.get("champion") or {}
    rows = []
    for dim in results.get("dims", []):
        key = str(dim)
        row = {"dim": int(dim),
               "base": _round(results.get("base", {}).get(key, {}).get(GATE_METRIC)),
               "finetuned": _round(results.get("finetuned", {}).get(key, {}).get(GATE_METRIC)),
               "vs_base": _interval(results.get("deltas", {}).get(key, {}).get(FLOAT32, {}).get(GATE_METRIC)),
               "vs_champion": None}
        if champion and not champion.get("error") and key in champion.get("deltas", {}):
            row["vs_champion"] = {"version": champion["version"],
                                  "champion": _round(champion.get(key, {}).get(GATE_METRIC)),
                                  **_interval(champion["deltas"][key].get(GATE_METRIC))}
        rows.append(row)
    return rows


def version_record(registry: ModelRegistry, version: int, aliases: dict[str, int | None]) -> dict:
    """What the commands show of one version, from its manifest and metrics (also the --json shape)."""
    manifest = registry.manifest(version)
    results = registry.metrics(version)
    gate = manifest.get("gate") or {}
    training = manifest.get("training") or {}
    contract = manifest.get("index_contract") or {}
    return {
        "model": registry.model_name,
        "version": version,
        "aliases": sorted(a for a, v in aliases.items() if v == version),
        "uri": registry.model_uri(version),
        "created": manifest.get("created"),
        "pipeline_run": manifest.get("pipeline_run") or manifest.get("owner") or None,
        "weights_sha256": manifest.get("weights_sha256"),
        "files": len(manifest.get("files", {})),
        "gate": {"promote": bool(gate.get("promote")), "reasons": gate.get("reasons", []),
                 "checks": gate.get("checks", []), "gated_dims": gate.get("gated_dims", []),
                 "champion_version": gate.get("champion_version")},
        "lineage": {
            "base_model": manifest.get("base_model"),
            "base_model_identity": manifest.get("base_model_identity"),
            "data_source": manifest.get("data_source"),
            "data_fingerprint": manifest.get("data_fingerprint"),
            "training_signature": manifest.get("training_signature"),
            "eval_fingerprint": manifest.get("eval_fingerprint"),
            "training": {k: training.get(k) for k in ("epochs", "steps", "train_pairs", "loss", "batch_size",
                                                      "lora_r", "device", "bf16", "train_seconds") if k in training},
        },
        "index_contract": {
            "query_prompt": contract.get("query_prompt"),
            "passage_prompt": contract.get("passage_prompt"),
            "dims": contract.get("valid_dims", []),
            "normalize_after_truncation": contract.get("normalize_after_truncation"),
            "similarity": contract.get("similarity"),
            "max_seq_length": training.get("max_seq_length") or None,
        },
        "evaluation": {
            "metric": GATE_METRIC,
            "n_queries": results.get("n_queries"),
            "n_corpus": results.get("n_corpus"),
            "eval_fingerprint": results.get("eval_fingerprint", manifest.get("eval_fingerprint")),
            "dims": dim_rows(results),
            "champion_error": (results.get("champion") or {}).get("error") or None,
            "recommendation": results.get("recommendation"),
        },
    }


# ---------------------------------------------------------------- output


@contextlib.contextmanager
def _console(out: TextIO) -> Iterator:
    """A rich console for `out`. A terminal gets its width and colours; pipes and logs get a wide fixed
    width (no wrapped table rows), no colour and no trailing blanks. Markup is off: values such as prompts
    are printed as they are."""
    from rich.console import Console

    options = dict(highlight=False, markup=False, emoji=False)
    if hasattr(out, "isatty") and out.isatty():
        yield Console(file=out, **options)
        return
    buffer = io.StringIO()
    yield Console(file=buffer, width=160, soft_wrap=True, **options)
    out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


def _table(*columns: str, title: str | None = None, right: tuple[str, ...] = ()):
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", no_wrap=True)
    return table


def _num(value) -> str:
    return f"{value:.4f}" if value is not None else "-"


def _ci(entry: dict | None) -> str:
    return f"{entry['delta']:+.4f} [{entry['low']:+.4f}, {entry['high']:+.4f}]" if entry else "-"


def _short(value, n: int = 12) -> str:
    return str(value)[:n] if value else "-"


def _stamp(created: str | None) -> str:
    return created[:16].replace("T", " ") + " UTC" if created else "-"


def _gate_word(record: dict) -> str:
    return "promoted" if record["gate"]["promote"] else "refused"


def _dump(value, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")


def _key_values(console, rows: list[tuple[str, str]]) -> None:
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for key, value in rows:
        grid.add_row(key, value)
    console.print(grid)


# ---------------------------------------------------------------- commands


def cmd_list(args, reg: Registry, out: TextIO, err: TextIO) -> int:
    name = parse_ref(args.name).name if args.name else reg.default_name
    registry = reg.open(name)
    aliases = reg.aliases(registry)
    records, damaged = [], []
    for version in registry.versions():
        try:
            records.append(version_record(registry, version, aliases))
        except RegistryError as exc:  # one damaged version does not hide the others
            damaged.append(version)
            print(f"error: {exc}", file=err)
    if args.json:
        _dump({"model": name, "registry": reg.uri, "aliases": aliases, "versions": records,
               "damaged_versions": damaged}, out)
    else:
        with _console(out) as console:
            table = _table("version", "created", "aliases", "gate", "dim", "NDCG@10", "Δ vs base [95%]", "base model",
                           "data", title=f"{name} in {reg.uri}", right=("version", "dim", "NDCG@10"))
            by_version = {record["version"]: record for record in records}
            for version in sorted([*by_version, *damaged]):
                record = by_version.get(version)
                if record is None:
                    table.add_row(str(version), "-", "-", "damaged", "-", "-", "-", "-", "-")
                    continue
                top = (record["evaluation"]["dims"] or [{}])[0]
                table.add_row(str(version), _stamp(record["created"]), ", ".join(record["aliases"]) or "-",
                              _gate_word(record), str(top.get("dim", "-")), _num(top.get("finetuned")),
                              _ci(top.get("vs_base")), str(record["lineage"]["base_model"] or "-"),
                              _short(record["lineage"]["data_fingerprint"]))
            console.print(table)
            history = ", ".join(f"{a} -> v{v}" if v is not None else f"{a} -> none" for a, v in aliases.items())
            console.print(f"aliases: {history or 'none'}")
    return EXIT_REGISTRY if damaged else EXIT_OK


def _show_record(args, reg: Registry) -> dict:
    ref = parse_ref(args.ref)
    registry = reg.open(ref.name)
    version = reg.resolve(registry, ref)
    record = version_record(registry, version, reg.aliases(registry))
    record["alias_history"] = {a: registry.alias_state(a).history for a in record["aliases"]}
    return record


def cmd_show(args, reg: Registry, out: TextIO, err: TextIO) -> int:
    record = _show_record(args, reg)
    if args.json:
        _dump(record, out)
        return EXIT_OK
    with _console(out) as console:
        _render_show(console, record)
    return EXIT_OK


def _render_show(console, record: dict) -> None:
    aliases = f"  ({', '.join(record['aliases'])})" if record["aliases"] else ""
    console.print(f"{record['model']} v{record['version']}{aliases}")
    _key_values(console, [("model folder", record["uri"]), ("created", _stamp(record["created"])),
                          ("pipeline run", record["pipeline_run"] or "-"),
                          ("weights", f"sha256 {_short(record['weights_sha256'], 16)}  ({record['files']} files, "
                                      "each with a SHA-256 that pull verifies)")])

    evaluation = record["evaluation"]
    console.print()
    console.print(f"Evaluation: {GATE_METRIC}, float32, {evaluation['n_queries']} queries over "
                  f"{evaluation['n_corpus']} passages; evaluation data {_short(evaluation['eval_fingerprint'])}. "
                  "Δ with a 95% paired bootstrap interval over queries.")
    champions = {row["vs_champion"]["version"] for row in evaluation["dims"] if row["vs_champion"]}
    columns = ["dim", "base", "fine-tuned", "Δ vs base [95%]"]
    if champions:
        columns += [f"champion v{min(champions)}", "Δ vs champion [95%]"]
    table = _table(*columns, right=("dim", "base", "fine-tuned", f"champion v{min(champions)}" if champions else ""))
    for row in evaluation["dims"]:
        cells = [str(row["dim"]), _num(row["base"]), _num(row["finetuned"]), _ci(row["vs_base"])]
        if champions:
            champion = row["vs_champion"]
            cells += [_num(champion["champion"]) if champion else "-", _ci(champion)]
        table.add_row(*cells)
    console.print(table)
    if record["evaluation"]["champion_error"]:
        console.print(f"The champion it was evaluated beside could not be scored: {record['evaluation']['champion_error']}")
    rec = evaluation.get("recommendation")
    if rec:
        console.print(f"Recommended index: dim {rec['dim']} {rec['precision']} ({rec['bytes_per_vector']} bytes/vector), "
                      f"{rec['metric']} {rec['score']:.4f} vs {rec['reference_score']:.4f} at {rec['reference']}.")

    gate = record["gate"]
    console.print()
    verdict = "promoted" if gate["promote"] else "not promoted"
    console.print(f"Gate: {verdict} (gated dims {', '.join(map(str, gate['gated_dims'])) or '-'}; compared with "
                  + (f"champion v{gate['champion_version']})" if gate["champion_version"] else "no champion)"))
    for reason in gate["reasons"]:
        console.print(f"  - {reason}")
    if gate["checks"]:
        checks = _table("collection", "dim", "against", "Δ [95%]", "rule", "passed", right=("dim",))
        for check in gate["checks"]:
            checks.add_row(check["collection"], str(check["dim"]), check["against"],
                           _ci(check) if "delta" in check else "-", check["rule"], "yes" if check["passed"] else "NO")
        console.print(checks)

    lineage = record["lineage"]
    training = lineage["training"]
    console.print()
    console.print("Lineage")
    _key_values(console, [
        ("base model", f"{lineage['base_model'] or '-'}  ({_short(lineage['base_model_identity'], 40)})"),
        ("data", f"{lineage['data_source'] or '-'}  (prepared data {_short(lineage['data_fingerprint'])})"),
        ("training", ", ".join(f"{k} {v}" for k, v in training.items()) or "-"),
        ("training settings", _short(lineage["training_signature"])),
        ("evaluation data", _short(lineage["eval_fingerprint"])),
    ])
    contract = record["index_contract"]
    console.print()
    console.print("Index contract (what a vector index built with this model must respect)")
    _key_values(console, [
        ("query prompt", repr(contract["query_prompt"])),
        ("passage prompt", repr(contract["passage_prompt"])
         + "  (stored in the model: encode_query / encode_document apply them)"),
        ("dims", ", ".join(map(str, contract["dims"])) + "  (Matryoshka: truncate_dim=one of these)"),
        ("normalise", "re-normalise after truncating" if contract["normalize_after_truncation"] else "no"),
        ("similarity", str(contract["similarity"])),
        ("max sequence length", str(contract["max_seq_length"] or "-")),
    ])


def cmd_pull(args, reg: Registry, out: TextIO, err: TextIO) -> int:
    ref = parse_ref(args.ref)
    registry = reg.open(ref.name)
    version = reg.resolve(registry, ref)
    target = Path(args.to)
    try:
        path = registry.pull(version, target)
    except OSError as exc:
        raise RegistryError(f"{target}: cannot write the model there ({exc.strerror or exc})") from None
    files = len(registry.manifest(version)["files"])
    result = {"model": registry.model_name, "version": version, "reference": str(ref), "path": str(path.resolve()),
              "files": files, "verified": True}
    if args.json:
        _dump(result, out)
    else:
        print(f"{registry.model_name} v{version} ({ref}) -> {path}: {files} files, SHA-256 verified", file=out)
        print(f"load it with: SentenceTransformer({str(path)!r}); encode_query / encode_document apply its prompts",
              file=out)
    return EXIT_OK


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def cmd_promote(args, reg: Registry, out: TextIO, err: TextIO) -> int:
    ref = parse_ref(args.ref)
    if ref.version is None and ref.alias is None:
        raise UsageError(f"models promote {args.ref}: name the version to promote, e.g. {ref.name}:3")
    alias = _alias_name(args.alias)
    registry = reg.open(ref.name)
    version = reg.resolve(registry, ref)
    state = registry.alias_state(alias)
    result = {"model": registry.model_name, "alias": alias, "version": version, "previous": state.version,
              "changed": state.version != version}
    if state.version == version:
        message = f"{registry.model_name}@{alias} already points at v{version}; nothing changed"
    else:
        gate = registry.manifest(version).get("gate") or {}
        if not gate.get("promote"):
            print(f"note: v{version} did not pass the promotion gate ({'; '.join(gate.get('reasons', [])) or 'no decision'}); "
                  "promoting it by hand", file=err)
        # Compare-and-swap against the alias as read above: a concurrent change is reported, not overwritten.
        if not registry.promote(version, name=alias, reason=f"medembed models promote ({_who()})",
                                expected=state.version):
            raise RegistryError(f"{registry.model_name}@{alias} changed to v{registry.alias(alias)} while promoting; "
                                "check `medembed models list` and run the command again")
        before = f"v{state.version}" if state.version is not None else "none"
        message = f"{registry.model_name}@{alias}: {before} -> v{version}"
    if args.json:
        _dump(result, out)
    else:
        print(message, file=out)
    return EXIT_OK


def cmd_rollback(args, reg: Registry, out: TextIO, err: TextIO) -> int:
    ref = parse_ref(args.name)
    if ref.version is not None or ref.alias is not None:
        raise UsageError(f"models rollback {args.name}: give the model name alone and the alias with --alias")
    alias = _alias_name(args.alias)
    registry = reg.open(ref.name)
    before = registry.alias(alias)
    target = registry.rollback(alias)
    if args.json:
        _dump({"model": registry.model_name, "alias": alias, "version": target, "previous": before}, out)
    else:
        print(f"{registry.model_name}@{alias}: v{before} -> v{target} (rolled back)", file=out)
    return EXIT_OK


def _paired(a: dict, b: dict, results_a: dict, results_b: dict, dim: int) -> dict | None:
    """B - A with a paired interval, when one of the two was scored beside the other in its own run."""
    def champion_delta(results: dict, other: dict) -> dict | None:
        champion = results.get("champion") or {}
        if a["model"] != b["model"] or champion.get("version") != other["version"] or champion.get("error"):
            return None
        return champion.get("deltas", {}).get(str(dim), {}).get(GATE_METRIC)

    if (delta := champion_delta(results_b, a)) is not None:  # B's run: B - A
        return {**_interval(delta), "measured_in": f"v{b['version']}"}
    if (delta := champion_delta(results_a, b)) is not None:  # A's run: A - B, turned around
        return {"delta": _round(-delta["delta"]), "low": _round(-delta["high"]), "high": _round(-delta["low"]),
                "measured_in": f"v{a['version']}"}
    return None


def cmd_diff(args, reg: Registry, out: TextIO, err: TextIO) -> int:
    sides = []
    for text in (args.a, args.b):
        ref = parse_ref(text)
        registry = reg.open(ref.name)
        version = reg.resolve(registry, ref)
        sides.append((registry, version, version_record(registry, version, reg.aliases(registry)),
                      registry.metrics(version)))
    (_, _, a, results_a), (_, _, b, results_b) = sides
    rows_a = {row["dim"]: row for row in a["evaluation"]["dims"]}
    rows_b = {row["dim"]: row for row in b["evaluation"]["dims"]}
    same_eval = a["evaluation"]["eval_fingerprint"] == b["evaluation"]["eval_fingerprint"]
    warnings = []
    if not same_eval:
        warnings.append(f"{a['model']} v{a['version']} and {b['model']} v{b['version']} were scored on different "
                        f"evaluation data (eval_fingerprint {_short(a['evaluation']['eval_fingerprint'])} vs "
                        f"{_short(b['evaluation']['eval_fingerprint'])}): their scores are not comparable; only a "
                        "run that scores both on the same data can say which is better")
    dims = []
    for dim in sorted(set(rows_a) | set(rows_b), reverse=True):
        ra, rb = rows_a.get(dim, {}), rows_b.get(dim, {})
        sa, sb = ra.get("finetuned"), rb.get("finetuned")
        dims.append({"dim": dim, "a": sa, "b": sb,
                     "b_minus_a": _round(sb - sa) if sa is not None and sb is not None else None,
                     "paired": _paired(a, b, results_a, results_b, dim) if same_eval else None,
                     "a_vs_base": ra.get("vs_base"), "b_vs_base": rb.get("vs_base")})
    lineage = {}
    for key in (*COMPARED, "eval_fingerprint"):
        lineage[key] = {"a": a["lineage"][key], "b": b["lineage"][key], "same": a["lineage"][key] == b["lineage"][key]}
    lineage["weights_sha256"] = {"a": a["weights_sha256"], "b": b["weights_sha256"],
                                 "same": a["weights_sha256"] == b["weights_sha256"]}
    for warning in warnings:
        print(f"warning: {warning}", file=err)
    if args.json:
        _dump({"a": {k: a[k] for k in ("model", "version", "aliases", "uri")},
               "b": {k: b[k] for k in ("model", "version", "aliases", "uri")},
               "metric": GATE_METRIC, "same_eval_data": same_eval, "dims": dims, "lineage": lineage,
               "warnings": warnings}, out)
        return EXIT_OK
    with _console(out) as console:
        _render_diff(console, a, b, dims, lineage, same_eval)
    return EXIT_OK


def _render_diff(console, a: dict, b: dict, dims: list[dict], lineage: dict, same_eval: bool) -> None:
    label_a, label_b = f"A = {a['model']} v{a['version']}", f"B = {b['model']} v{b['version']}"
    console.print(f"{label_a}{' (' + ', '.join(a['aliases']) + ')' if a['aliases'] else ''}   "
                  f"{label_b}{' (' + ', '.join(b['aliases']) + ')' if b['aliases'] else ''}")
    table = _table("dim", f"A {GATE_METRIC}", f"B {GATE_METRIC}", "B - A", "B - A paired [95%]", "A vs base [95%]",
                   "B vs base [95%]", right=("dim", f"A {GATE_METRIC}", f"B {GATE_METRIC}", "B - A"))
    for row in dims:
        paired = row["paired"]
        table.add_row(str(row["dim"]), _num(row["a"]), _num(row["b"]),
                      f"{row['b_minus_a']:+.4f}" if row["b_minus_a"] is not None else "-",
                      f"{_ci(paired)} (run of {paired['measured_in']})" if paired else "-",
                      _ci(row["a_vs_base"]), _ci(row["b_vs_base"]))
    console.print(table)
    if not same_eval:
        console.print("WARNING: different evaluation data; the columns above are not comparable (see stderr).")
    console.print()
    lines = _table("lineage", "A", "B", "")
    for key, entry in lineage.items():
        lines.add_row(LINEAGE_LABELS[key], _short(entry["a"], 24), _short(entry["b"], 24),
                      "same" if entry["same"] else "differs")
    console.print(lines)


def cmd_import_base(args, reg: Registry, out: TextIO, err: TextIO) -> int:
    """Mirror a base model into MinIO (or a folder), so pipeline tasks never reach a model hub."""
    from ..base_models import import_base
    from ..models import resolve_model_path

    source = args.source
    folder = Path(resolve_model_path(source)) if source.startswith("bundled:") else Path(source).expanduser()
    manifest = import_base(source, args.uri, folder=folder if folder.is_dir() else None)
    result = {"source": source, "uri": args.uri, "files": len(manifest["files"]), "digest": manifest["digest"]}
    if args.json:
        _dump(result, out)
    else:
        print(f"{source} -> {args.uri}: {result['files']} files, manifest {manifest['digest'][:12]}", file=out)
        print(f"use it: --set train.base_model={args.uri}", file=out)
    return EXIT_OK


LINEAGE_LABELS = {**COMPARED, "eval_fingerprint": "evaluation data", "weights_sha256": "weights"}
HANDLERS = {"list": cmd_list, "show": cmd_show, "pull": cmd_pull, "promote": cmd_promote,
            "rollback": cmd_rollback, "diff": cmd_diff, "import-base": cmd_import_base}


# ---------------------------------------------------------------- parser and entry


def add_commands(sub, common) -> None:
    """`medembed models ...` on the CLI's subparsers; `common(parser, default_profile)` adds --profile/--set."""
    p = sub.add_parser("models", help="list, inspect, pull, promote, roll back and compare registered models",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = p.add_subparsers(dest="models_command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        q = models.add_parser(name, help=help_text)
        common(q, "local")
        q.add_argument("--json", action="store_true", help="one JSON document on stdout")
        return q

    q = command("list", "the versions of a model: aliases, gate outcome, headline NDCG@10")
    q.add_argument("name", nargs="?", default=None, metavar="NAME",
                   help="model name (default: the configuration's registry.model_name)")
    q = command("show", "one version: metrics per dim, gate decision, lineage, index contract")
    q.add_argument("ref", metavar="REF", help=REF_HELP)
    q = command("pull", "download a version into a new folder; every file is checked against its SHA-256")
    q.add_argument("ref", metavar="REF", help=REF_HELP)
    q.add_argument("--to", required=True, metavar="DIR", help="a new or empty folder")
    q = command("promote", "point an alias (default champion) at a version")
    q.add_argument("ref", metavar="NAME:N", help="the version to promote")
    q.add_argument("--alias", default=CHAMPION)
    q = command("rollback", "point an alias back at the version it held before")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--alias", default=CHAMPION)
    q = command("diff", "two versions side by side: NDCG@10 per dim, lineage")
    q.add_argument("a", metavar="A", help=REF_HELP)
    q.add_argument("b", metavar="B", help=REF_HELP)
    q = command("import-base", "mirror a base model (hub name, folder or bundled:...) into s3:// with per-file "
                "SHA-256, for clusters without a model hub; run once from a machine with hub access")
    q.add_argument("source", metavar="NAME_OR_DIR", help="e.g. intfloat/multilingual-e5-large, or a saved model folder")
    q.add_argument("uri", metavar="URI", help="e.g. s3://medembed-registry/base-models/intfloat/multilingual-e5-large")


def run(args, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Execute a parsed `models` command; every failure is one line on stderr and an exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        config = load_config(args.profile, args.set)
        reg = Registry(config.registry.registry_uri, config.registry.model_name)
        return HANDLERS[args.models_command](args, reg, out, err)
    except (UsageError, ConfigError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    except RegistryError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_REGISTRY
    except StorageError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=err)
        return EXIT_STORE
