from typing import NamedTuple

from kfp.dsl import HTML, Dataset, Markdown, Metrics, Output


def prep_data(
    config: dict,
    data_identity: str,
    train_data: Output[Dataset],
    eval_data: Output[Dataset],
    data_card: Output[Markdown],
    data_card_html: Output[HTML],
    prep_metrics: Output[Metrics],
) -> NamedTuple("PrepOutputs", [("fingerprint", str), ("train_pairs", int), ("eval_queries", int)]):
    """Ingest, validate, redact, dedup, split by group, mine hard negatives; write the training set,
    the IR evaluation set and the data card. `data_identity` (snapshot_data) ties KFP's cache to the
    input bytes."""
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from medembed import artifacts
    from medembed.config import PipelineConfig
    from medembed.prep import stage

    stats = stage.run(PipelineConfig.from_dict(config), Path(train_data.path), Path(eval_data.path))
    shutil.copyfile(Path(train_data.path) / artifacts.CARD_MARKDOWN_FILE, data_card.path)
    shutil.copyfile(Path(train_data.path) / artifacts.CARD_HTML_FILE, data_card_html.path)
    train_data.metadata.update({"pairs": stats.train_pairs, "fingerprint": stats.fingerprint, "data_identity": data_identity,
                                "negatives": stats.num_negatives, "languages": stats.languages})
    eval_data.metadata.update({"queries": stats.eval_queries, "corpus": stats.eval_corpus, "layout": "beir",
                               "shift_probes": {name: probe["queries"] for name, probe in stats.shift_probes.items()}})
    for name, value in {
        "rows_read": stats.rows_read,
        "rows_dropped_bad": stats.dropped_bad,
        "pairs_kept": stats.rows_kept,
        "train_pairs": stats.train_pairs,
        "eval_queries": stats.eval_queries,
        "passages_truncated_pct": round(stats.token_lengths["passages"]["truncated_pct"], 2),
        "groups_crossing_splits": stats.groups_crossing_splits,
        "pii_found": sum(stats.pii_found.values()),
    }.items():
        prep_metrics.log_metric(name, value)
    # The scalars also as a file: kfp.local's cache only replays a task whose output artifacts all exist as files.
    Path(prep_metrics.path).write_text(json.dumps(prep_metrics.metadata))
    outputs = namedtuple("PrepOutputs", ["fingerprint", "train_pairs", "eval_queries"])
    return outputs(stats.fingerprint, stats.train_pairs, stats.eval_queries)
