from kfp.dsl import Markdown, Output


def snapshot_data(config: dict, data_snapshot: Output[Markdown]) -> str:
    """What data.data_uri points to right now (files, sizes, content hashes). Never cached: its digest
    goes into data prep's inputs, so KFP replays prep from cache only on the same bytes."""
    from medembed.config import PipelineConfig
    from medembed.models import setup_logging
    from medembed.prep.snapshot import data_snapshot as take_snapshot, snapshot_markdown

    setup_logging()
    snapshot = take_snapshot(PipelineConfig.from_dict(config).data.data_uri)
    with open(data_snapshot.path, "w", encoding="utf-8") as handle:
        handle.write(snapshot_markdown(snapshot))
    return snapshot["digest"]
