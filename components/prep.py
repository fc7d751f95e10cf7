from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

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
    train_data: Output[Dataset],
    eval_data: Output[Dataset],
    data_card: Output[Markdown],
) -> NamedTuple("PrepOutputs", [("fingerprint", str), ("train_pairs", int), ("eval_queries", int)]):
    """Ingest, clean, dedup and split pairs by group; write the training set and the IR evaluation set."""
    from collections import namedtuple
    from pathlib import Path

    from medembed import data, stages
    from medembed.config import DataConfig

    config = DataConfig(
        data_uri=data_uri,
        question_field=question_field,
        passage_field=passage_field,
        group_fields=tuple(group_fields),
        dev_fraction=dev_fraction,
        test_fraction=test_fraction,
        max_train_pairs=max_train_pairs,
        seed=seed,
    )
    stats = stages.prep(config, Path(train_data.path), Path(eval_data.path))
    Path(data_card.path).write_text(data.data_card_markdown(stats))
    train_data.metadata.update({"pairs": stats.train_pairs, "fingerprint": stats.fingerprint})
    eval_data.metadata.update({"queries": stats.eval_queries, "corpus": stats.eval_corpus, "layout": "beir"})
    outputs = namedtuple("PrepOutputs", ["fingerprint", "train_pairs", "eval_queries"])
    return outputs(stats.fingerprint, stats.train_pairs, stats.eval_queries)
