"""Ingestion: every supported input shape, column mapping, tagged multi-input merge, s3://."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from conftest import make_rows, write_jsonl
from medembed.config import LOCAL
from medembed.prep import DataError, stage
from medembed.prep.ingest import parse_inputs, read_records, resolve_local_path

MEDQUAD_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="{doc}" source="GHR" url="https://example.org/{doc}">
<Focus>{focus}</Focus>
<FocusAnnotations><UMLS><CUIs><CUI>C{doc}</CUI></CUIs></UMLS></FocusAnnotations>
<QAPairs>
<QAPair pid="1"><Question qid="{doc}-1" qtype="information">What is {focus} ?</Question><Answer>{focus} is a condition number {doc}.</Answer></QAPair>
<QAPair pid="2"><Question qid="{doc}-2" qtype="treatment">What are the treatments for {focus} ?</Question><Answer>Treatment of {focus} depends on case {doc}.</Answer></QAPair>
</QAPairs>
</Document>
"""


def config_for(uri: str, **changes):
    base = dataclasses.replace(LOCAL.data, data_uri=uri, max_train_pairs=0, min_train_pairs=4, num_negatives=0,
                               eval_distractors=5)
    return dataclasses.replace(base, **changes)


def prep(tmp_path, config):
    return stage.prepare(config, tmp_path / "train", tmp_path / "eval", model=LOCAL.train.base_model,
                         max_seq_length=LOCAL.train.max_seq_length)


def test_csv_parquet_and_jsonl_give_the_same_prepared_data(tmp_path):
    rows = make_rows()
    jsonl = write_jsonl(tmp_path / "pairs.jsonl", rows)
    csv_path = tmp_path / "pairs.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    prints = {prep(tmp_path / p.suffix[1:], config_for(str(p))).fingerprint for p in (jsonl, csv_path, parquet)}
    assert len(prints) == 1


def test_saved_datasets_folder_with_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = make_rows()
    DatasetDict({"train": Dataset.from_list(rows[:30]), "extra": Dataset.from_list(rows[30:])}).save_to_disk(str(tmp_path / "hf"))
    stats = prep(tmp_path, config_for(str(tmp_path / "hf")))
    assert stats.rows_read == len(rows)


def test_medquad_xml_layout(tmp_path):
    folder = tmp_path / "MedQuAD" / "1_CancerGov_QA"
    folder.mkdir(parents=True)
    for i, focus in enumerate(["Anemia", "Asthma", "Gout", "Lupus", "Rickets", "Scurvy", "Tetanus", "Mumps"]):
        (folder / f"{i:07d}.xml").write_text(MEDQUAD_XML.format(doc=f"{i:07d}", focus=focus))
    records = list(read_records(tmp_path / "MedQuAD"))
    assert len(records) == 16
    first = records[0][2]
    assert first["doc_id"] == "1_CancerGov_QA/0000000" and first["focus"] == "Anemia" and first["cuis"] == ["C0000000"]
    stats = prep(tmp_path, config_for(str(tmp_path / "MedQuAD"), group_fields=("doc_id", "focus", "cuis")))
    assert stats.rows_kept == 16 and stats.groups == 8


def test_tagged_inputs_are_merged_and_column_map_applies(tmp_path):
    english = write_jsonl(tmp_path / "en.jsonl", make_rows())
    renamed = [{"prompt": r["question"].replace("What", "Which"), "response": r["answer"] + " More.", "doc_id": r["doc_id"] + "b", "focus": r["focus"] + " b"} for r in make_rows()]
    other = write_jsonl(tmp_path / "other.jsonl", [{**r, "question": r["prompt"], "answer": r["response"]} for r in renamed])
    assert [i.tag for i in parse_inputs(f"en={english},{other}")] == ["en", "other"]
    stats = prep(tmp_path, config_for(f"en={english},other={other}"))
    assert stats.rows_by_source == {"en": len(make_rows()), "other": len(make_rows())}

    mapped = write_jsonl(tmp_path / "mapped.jsonl", renamed)
    stats = prep(tmp_path / "m", config_for(str(mapped), column_map=("question=prompt", "answer=response")))
    assert stats.rows_kept == len(renamed)


def test_s3_input(tmp_path, s3_endpoint):
    from medembed.storage import ObjectStore

    store, _ = ObjectStore.from_uri("s3://medembed-data/x")
    store.ensure_bucket()
    path = write_jsonl(tmp_path / "pairs.jsonl", make_rows())
    store.put_bytes("pairs/pairs.jsonl", path.read_bytes())
    stats = prep(tmp_path / "file", config_for("s3://medembed-data/pairs/pairs.jsonl"))
    assert stats.rows_read == len(make_rows())
    stats = prep(tmp_path / "prefix", config_for("s3://medembed-data/pairs/"))
    assert stats.rows_read == len(make_rows())
    with pytest.raises(DataError, match="input not found"):
        resolve_local_path("s3://medembed-data/nothing-here", tmp_path)


def test_undecodable_bytes_are_a_row_level_problem(tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = [json.dumps(r) for r in make_rows()]
    payload = "\n".join(lines).encode() + b'\n{"question": "What is caf\xe9 ?", "answer": "A drink."}\n'
    path.write_bytes(payload)
    stats = prep(tmp_path, config_for(str(path), max_bad_row_fraction=0.1))
    assert stats.validation["issues_by_reason"] == {"broken encoding": 1}
    assert stats.validation["issues"][0]["row"] == len(lines) + 1
