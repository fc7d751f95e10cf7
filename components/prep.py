from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Metrics, Output

from medembed.config import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def prep_data(
    data_uri: str,
    question_field: str,
    passage_field: str,
    group_fields: list,
    dev_fraction: float,
    test_fraction: float,
    max_train_pairs: int,
    seed: int,
    base_model: str,
    max_seq_length: int,
    num_negatives: int,
    pii_action: str,
    max_bad_row_fraction: float,
    data_options: dict,
    train_data: Output[Dataset],
    eval_data: Output[Dataset],
    data_card: Output[Markdown],
    data_card_html: Output[HTML],
    prep_metrics: Output[Metrics],
) -> NamedTuple("PrepOutputs", [("fingerprint", str), ("train_pairs", int), ("eval_queries", int)]):
    """Ingest, validate, redact, dedup, split by group, mine hard negatives; write the training set,
    the IR evaluation set and the data card. `data_options` carries the profile's other DataConfig
    fields (dedup, distractors, mining margins), so one config object drives every run."""
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from medembed import data, stages

    config = data.config_from_options({
        **(data_options or {}),
        "data_uri": data_uri,
        "question_field": question_field,
        "passage_field": passage_field,
        "group_fields": group_fields,
        "dev_fraction": dev_fraction,
        "test_fraction": test_fraction,
        "max_train_pairs": max_train_pairs,
        "seed": seed,
        "model": base_model,
        "max_seq_length": max_seq_length,
        "num_negatives": num_negatives,
        "pii_action": pii_action,
        "max_bad_row_fraction": max_bad_row_fraction,
    })
    stats = stages.prep(config, Path(train_data.path), Path(eval_data.path))
    shutil.copyfile(Path(train_data.path) / data.CARD_MARKDOWN_FILE, data_card.path)
    shutil.copyfile(Path(train_data.path) / data.CARD_HTML_FILE, data_card_html.path)
    train_data.metadata.update({"pairs": stats.train_pairs, "fingerprint": stats.fingerprint,
                                "negatives": stats.num_negatives, "languages": stats.languages})
    eval_data.metadata.update({"queries": stats.eval_queries, "corpus": stats.eval_corpus, "layout": "beir"})
    passages = stats.token_lengths["passages"]
    for name, value in {
        "rows_read": stats.rows_read,
        "rows_dropped_bad": stats.dropped_bad,
        "pairs_kept": stats.rows_kept,
        "train_pairs": stats.train_pairs,
        "eval_queries": stats.eval_queries,
        "passages_truncated_pct": round(passages["truncated_pct"], 2),
        "groups_crossing_splits": stats.groups_crossing_splits,
        "pii_found": sum(stats.pii_found.values()),
    }.items():
        prep_metrics.log_metric(name, value)
    outputs = namedtuple("PrepOutputs", ["fingerprint", "train_pairs", "eval_queries"])
    return outputs(stats.fingerprint, stats.train_pairs, stats.eval_queries)
