"""Data prep: planted problems are caught, the bundled MedQuAD sample gives a clean report."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import make_rows, write_jsonl
from medembed import artifacts
from medembed.config import LOCAL
from medembed.prep import DataError, cleaning, dedup, negatives, privacy, split, stage
from medembed.prep.stats import PrepStats
from medembed.prep.validation import normalize_text

PLANTED_PII = ["jane.doe@example.org", "555-123-4567", "84736251", "04/05/1961", "Johnson"]
GOUT_ANSWER = "Gout is caused by uric acid crystals that build up in a joint and cause sudden pain and swelling."
LUPUS_ANSWER = ("Most people with lupus can expect a normal life span with follow up care, medicines that calm "
                "the immune system, sun protection, rest and regular checks of the kidneys, blood and heart.")


def bag_of_words(texts: list[str], kind: str) -> torch.Tensor:
    """A deterministic stand-in for the base model: word-hash counts."""
    out = torch.zeros(len(texts), 512)
    for row, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            out[row, hash(word) % 512] += 1
    return out


def planted_rows() -> list[dict]:
    rows = make_rows()
    rows += [
        # Leak through a shared answer: different document and focus, same passage text.
        {"doc_id": "docA", "focus": "gout", "question": "What causes gout attacks ?", "answer": GOUT_ANSWER},
        {"doc_id": "docB", "focus": "podagra", "question": "Why does podagra happen ?", "answer": GOUT_ANSWER},
        # Same query with a different answer: grouped, not dropped.
        {"doc_id": "docC", "focus": "hyperuricemia", "question": "What causes gout attacks?", "answer": "High urate levels in blood."},
        # Leak through near-duplicate queries only.
        {"doc_id": "docD", "focus": "x1", "question": "What are the common causes of gout flares in older adults who live alone ?", "answer": "Diet, kidney function and some medicines."},
        {"doc_id": "docE", "focus": "x2", "question": "What are the common causes of gout flares in older adults who live alone today ?", "answer": "Alcohol and obesity raise the risk."},
        # A near-duplicate pair (punctuation in the query, one word in the answer): dropped.
        {"doc_id": "docF", "focus": "lupus", "question": "What is the outlook for lupus patients ?", "answer": LUPUS_ANSWER},
        {"doc_id": "docF2", "focus": "lupus outlook", "question": "What is the outlook for lupus patients?", "answer": LUPUS_ANSWER.replace("and heart.", "and hearts.")},
        # An exact duplicate pair.
        dict(make_rows()[0]),
        # Personal data.
        {"doc_id": "docP", "focus": "p1", "question": "Who do I contact about my results ?", "answer": "Write to jane.doe@example.org or call 555-123-4567."},
        {"doc_id": "docQ", "focus": "p2", "question": "What did the discharge note say ?", "answer": "Mrs. Johnson, MRN: 84736251, DOB: 04/05/1961, was discharged."},
        # Malformed rows.
        {"doc_id": "docM1", "focus": "m1", "question": 42, "answer": "A number is not a question."},
        {"doc_id": "docM2", "focus": "m2", "question": "What is caf\u00c3\u00a9 au lait spot ?", "answer": "A flat patch of darker skin."},
        {"doc_id": "docM3", "focus": "m3", "question": "   ", "answer": "An answer without a question."},
        {"doc_id": "docM4", "focus": "m4", "question": "What is too long ?", "answer": "word " * 30_000},
        # HTML remnants are cleaned, not dropped.
        {"doc_id": "docH", "focus": "h1", "question": "What is eczema ?", "answer": "<p>Eczema is an itchy skin <b>inflammation</b> &amp; rash.</p>"},
    ]
    return rows


def write_planted(tmp_path: Path) -> Path:
    path = write_jsonl(tmp_path / "planted.jsonl", planted_rows())
    with open(path, "a") as handle:
        handle.write('{"question": "broken json", "answer": \n')
    return path


def config_for(path, **changes):
    base = dataclasses.replace(LOCAL.data, data_uri=str(path), max_train_pairs=0, min_train_pairs=4,
                               max_bad_row_fraction=0.2, eval_distractors=20, num_negatives=1)
    return dataclasses.replace(base, **changes)


def prepare(config, train_dir, eval_dir, model=LOCAL.train.base_model, max_seq_length=LOCAL.train.max_seq_length, **kwargs):
    """Prep with the local profile's training model, as the pipeline couples them."""
    return stage.prepare(config, train_dir, eval_dir, model=model, max_seq_length=max_seq_length, **kwargs)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_planted_problems_are_caught_and_counted(tmp_path):
    path = write_planted(tmp_path)
    stats = prepare(config_for(path), tmp_path / "train", tmp_path / "eval", embed=bag_of_words)

    issues = stats.validation["issues_by_reason"]
    assert issues["wrong type"] == 1 and issues["broken encoding"] == 1 and issues["empty"] == 1
    assert issues["absurd length"] == 1 and issues["not valid JSON"] == 1
    assert stats.dropped_bad == 5
    assert stats.validation["warnings_by_reason"]["html remnants removed"] == 1
    reported = {(i["row"], i["field"]) for i in stats.validation["issues"]}
    assert (len(make_rows()) + 11, "question") in reported  # the int question, by row and field
    assert stats.dropped_duplicate == 1
    assert stats.dropped_near_duplicate == 1
    assert stats.queries_with_several_answers >= 1
    assert stats.groups_crossing_splits == 0 and stats.near_duplicate_queries_crossing_splits == 0
    assert set(stats.pii_found) >= {"email", "phone", "record_number", "date_of_birth", "person_name"}

    # Every file, the built-in probes under eval/probes/ included.
    outputs = "".join(p.read_text() for d in ("train", "eval") for p in (tmp_path / d).rglob("*") if p.is_file())
    for value in PLANTED_PII:
        assert value not in outputs, "personal data must be redacted from every output, reports included"
    assert "<b>" not in outputs and "Eczema is an itchy skin inflammation & rash." in outputs

    train = read(tmp_path / "train" / artifacts.TRAIN_FILE)
    assert all(set(row) == {"anchor", "positive", "negative_1"} for row in train)
    row_of = {normalize_text(r["answer"]): r for r in planted_rows() if isinstance(r["answer"], str)}
    same_document_other_type = 0
    for row in train:
        positive, negative = row_of.get(row["positive"], {}), row_of.get(row["negative_1"], {})
        if positive.get("qtype") and negative.get("qtype"):
            # Same topic and question type: a possible positive, never a negative.
            assert (positive["focus"], positive["qtype"]) != (negative["focus"], negative["qtype"])
            same_document_other_type += positive["doc_id"] == negative["doc_id"]
        else:  # rows without a question type are guarded by their whole group
            assert positive.get("doc_id") != negative.get("doc_id"), "a same-group passage became a negative"
    # The hardest true negatives (same disease, another question type) are now mined.
    assert same_document_other_type > 0
    queries = read(tmp_path / "eval" / artifacts.QUERIES_FILE)
    assert all(q["language"] == "en" for q in queries)
    card = (tmp_path / "train" / artifacts.CARD_HTML_FILE).read_text()
    assert "data:image/png;base64," in card and "near-duplicate queries crossing splits" in card


def test_planted_leaks_share_a_group_and_a_crossing_is_detected(tmp_path):
    config = config_for(write_planted(tmp_path))
    stats = PrepStats(source="planted")
    pairs = split.mark_near_duplicates(cleaning.load_pairs(config, stats, tmp_path), config, stats)
    groups = split.connected_groups(pairs)
    group_of = {p["query"]: g for p, g in zip(pairs, groups)}
    assert group_of["What causes gout attacks ?"] == group_of["Why does podagra happen ?"]  # shared answer
    assert group_of["What causes gout attacks ?"] == group_of["What causes gout attacks?"]  # same query
    assert group_of["What are the common causes of gout flares in older adults who live alone ?"] == group_of["What are the common causes of gout flares in older adults who live alone today ?"]

    # Split the planted leaks apart on purpose: both checks must notice.
    leaky = ["test" if p["query"] in ("Why does podagra happen ?", "What are the common causes of gout flares in older adults who live alone today ?") else "train" for p in pairs]
    assert split.groups_crossing(pairs, leaky) >= 2
    queries = [p["query"] for p in pairs]
    signatures = dedup.signatures(queries, config.minhash_perms, config.shingle_words, config.shingle_max_words)
    assert dedup.crossing_near_duplicates(queries, signatures, leaky, config.near_dup_threshold) >= 1


def test_miner_never_takes_a_passage_sharing_a_guard_key():
    queries = ["nephritis symptoms", "gout pain", "asthma cough"]
    positives = ["nephritis symptoms swelling blood urine", "gout pain toe", "asthma cough wheeze"]
    # The fourth passage is nearly the first query's answer and shares its guard key: a false negative.
    queries.append("nephritis causes")
    positives.append("nephritis symptoms swelling blood urine protein")
    guards = [{"k0"}, {"k1"}, {"k2"}, {"k0"}]
    chosen, stats = negatives.mine(bag_of_words, queries, positives, guards, num_negatives=1, margin=0.0, max_score=1.0, seed=0)
    assert chosen[0] != [positives[3]] and chosen[3] != [positives[0]]
    assert stats.skipped_possible_positive >= 2
    assert all(not guards[positives.index(n[0])] & g for n, g in zip(chosen, guards))


def test_guard_keys_allow_same_topic_other_question_type():
    """Same focus + same qtype (or a near-duplicate question/answer) is a possible positive; the same
    focus with another question type is the hardest true negative; rows without the fields fall back to
    their connected group."""
    def pair(focus, qtype, query_cluster, passage_cluster):
        return {"guard": {"focus": focus, "qtype": qtype}, "query_cluster": query_cluster, "passage_cluster": passage_cluster}

    fields = ("focus", "qtype")
    symptoms = negatives.negative_guard_keys(pair(("gout",), ("symptoms",), 1, 1), group=7, fields=fields)
    treatment = negatives.negative_guard_keys(pair(("gout",), ("treatment",), 2, 2), group=7, fields=fields)
    other_source = negatives.negative_guard_keys(pair(("gout", "podagra"), ("symptoms",), 3, 3), group=7, fields=fields)
    shared_answer = negatives.negative_guard_keys(pair(("lupus",), ("causes",), 4, 1), group=9, fields=fields)
    unknown_type = negatives.negative_guard_keys(pair(("gout",), (), 5, 5), group=7, fields=fields)
    assert not symptoms & treatment
    assert symptoms & other_source and symptoms & shared_answer
    assert ("group", 7) in unknown_type and ("group", 7) not in symptoms
    assert ("group", 7) in negatives.negative_guard_keys(pair(("gout",), ("symptoms",), 1, 1), group=7, fields=())

    queries = ["what are the symptoms of gout", "how is gout treated", "what are the signs of gout"]
    positives = ["gout symptoms are joint pain and swelling", "gout treatment is rest and medicine for joint pain",
                 "signs of gout are joint pain swelling and redness"]
    chosen, _ = negatives.mine(bag_of_words, queries, positives, [symptoms, treatment, other_source], num_negatives=1,
                               margin=0.0, max_score=1.0, seed=0)
    assert chosen[0] == [positives[1]]  # the treatment answer: same disease, other question type
    assert chosen[2] == [positives[1]]  # never the other source's symptoms answer


def test_miner_applies_margin_and_ceiling():
    queries, positives, guards = ["a b c", "x y z"], ["a b c d", "a b c"], [{0}, {1}]
    # "a b c" (pair 1's passage) scores above pair 0's own positive: too close, skipped; nothing else is left.
    chosen, stats = negatives.mine(bag_of_words, queries, positives, guards, num_negatives=1, margin=0.05, max_score=0.99, seed=0)
    assert stats.skipped_margin_or_ceiling >= 1 and stats.random_fill >= 1
    assert chosen[0] == ["a b c"]  # random fill from the only other group


def test_too_many_bad_rows_fail_naming_file_row_and_field(tmp_path):
    path = write_planted(tmp_path)
    with pytest.raises(DataError, match="more than the tolerance") as error:
        prepare(config_for(path, max_bad_row_fraction=0.01), tmp_path / "train", tmp_path / "eval", embed=bag_of_words)
    message = str(error.value)
    assert str(path) in message and "row" in message and "field 'question'" in message and "tolerance" in message
    assert not (tmp_path / "train").exists() and not (tmp_path / "eval").exists()


def test_pii_fail_mode_names_rows_and_kinds_but_not_values(tmp_path):
    path = write_planted(tmp_path)
    with pytest.raises(DataError, match="personal data") as error:
        prepare(config_for(path, pii_action="fail"), tmp_path / "train", tmp_path / "eval", embed=bag_of_words)
    message = str(error.value)
    assert "email" in message and "row" in message
    assert not any(value in message for value in PLANTED_PII)
    assert not (tmp_path / "train").exists()


@pytest.mark.parametrize("text, kind", [
    ("mail me at a.b@c.org", "email"), ("call +1 (555) 010-2000 now", "phone"), ("MRN 12345678", "record_number"),
    ("SSN 123-45-6789", "ssn"), ("DOB: 1961-05-04", "date_of_birth"), ("né le 12 mars 1960", "date_of_birth"),
    ("Mr. Smith was seen", "person_name"), ("patient name: Ann Lee", "person_name"),
])
def test_privacy_patterns(text, kind):
    assert kind in privacy.scan(text)
    assert f"[{kind.upper()}]" in privacy.redact(text)[0]


@pytest.mark.parametrize("text", ["About 1 in 10,000 people, ages 20-30", "The M phase of mitosis", "Call your doctor.",
                                  "In young children, M. Malmoense may cause swollen nodes."])
def test_privacy_leaves_medical_text_alone(text):
    assert not privacy.scan(text)


def test_question_heading_is_removed_only_when_it_repeats_the_question():
    from medembed.prep.validation import strip_question_heading

    answer = "What are the signs and symptoms of ABCD syndrome? The Human Phenotype Ontology lists them."
    assert strip_question_heading("What are the symptoms of ABCD syndrome ?", answer, 0.6) == ("The Human Phenotype Ontology lists them.", True)
    other = "Who is at risk? All people with diabetes."
    assert strip_question_heading("What causes diabetic retinopathy ?", other, 0.6) == (other, False)


def test_minhash_signatures_equal_datasketch():
    from datasketch import MinHash

    texts = ["What are the symptoms of gout in adults ?", "What causes gout ?", "x", LUPUS_ANSWER]
    ours = dedup.signatures(texts, 64, 3, 120)
    hashes, docs = dedup.corpus_shingle_hashes(texts, 3, 120)
    for index, signature in enumerate(ours):
        reference = MinHash(num_perm=64, seed=1, hashfunc=int)
        reference.update_batch([int(h) for h in hashes[docs == index]])
        assert (reference.hashvalues == signature).all()
    assert [int((docs == i).sum()) for i in range(len(texts))] == [6, 1, 1, 30]  # 8 words -> 6 trigrams; short texts are one shingle


def test_banded_lsh_finds_what_datasketch_lsh_finds():
    from datasketch import LeanMinHash, MinHashLSH

    texts = [f"What are the symptoms of {topic} in children and adults ?" for topic in ("gout", "lupus", "mumps")]
    texts += [t.replace("?", "today ?") for t in texts] + ["Something else entirely about rickets and bones ."]
    matrix = dedup.signatures(texts, 64, 3, 120)
    ours = set(zip(*(side.tolist() for side in dedup.similar_pairs(matrix, 0.8))))
    lsh = MinHashLSH(threshold=0.8, num_perm=64)
    minhashes = [LeanMinHash(seed=1, hashvalues=row, scheme="affine32") for row in matrix]
    for index, minhash in enumerate(minhashes):
        lsh.insert(index, minhash)
    theirs = {(min(i, j), max(i, j)) for i, m in enumerate(minhashes) for j in lsh.query(m)
              if i != j and m.jaccard(minhashes[j]) >= 0.8}
    assert ours == theirs and len(ours) >= 3


def test_language_detection_matches_the_library_and_tags_french():
    from medembed.prep.language import detect_languages, detect_languages_reference

    texts = ["Quels sont les effets indésirables des anticoagulants oraux ?", "What are the symptoms of gout ?",
             "¿Cuáles son los síntomas de la gota?", ""]
    assert detect_languages(texts) == detect_languages_reference(texts)
    assert detect_languages(texts)[:2] == ["fr", "en"] and detect_languages(texts)[3] == "und"


def test_bundled_medquad_sample_report(tmp_path):
    """The local profile's data, mining excluded: counts at each step, zero leakage, truncation."""
    config = dataclasses.replace(LOCAL.data, num_negatives=0)
    stats = prepare(config, tmp_path / "train", tmp_path / "eval")
    assert stats.rows_read == 3000 and stats.dropped_bad == 0
    assert stats.rows_kept == 3000 - stats.dropped_duplicate - stats.dropped_near_duplicate
    assert stats.groups_crossing_splits == 0 and stats.near_duplicate_queries_crossing_splits == 0
    passages = stats.token_lengths["passages"]
    assert passages["truncated"] > 0 and 0 < passages["truncated_pct"] < 100
    assert stats.languages == {"en": stats.rows_kept}
    assert stats.eval_distractors == config.eval_distractors and stats.eval_corpus > stats.eval_distractors
    card = (tmp_path / "train" / artifacts.CARD_MARKDOWN_FILE).read_text()
    for line in ("| rows read | 3000 |", "| groups crossing splits | 0 |", "truncated", "## Languages"):
        assert line in card
    qrels = (tmp_path / "eval" / artifacts.QRELS_FILE).read_text().splitlines()
    assert len(qrels) - 1 == stats.eval_qrels >= stats.eval_queries


def test_fingerprint_is_stable_and_content_sensitive(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", make_rows())
    config = config_for(path, num_negatives=0)
    first = prepare(config, tmp_path / "a" / "train", tmp_path / "a" / "eval").fingerprint
    again = prepare(config, tmp_path / "b" / "train", tmp_path / "b" / "eval").fingerprint
    rows = make_rows()
    rows[0]["answer"] += " Changed."
    changed = prepare(config_for(write_jsonl(tmp_path / "changed.jsonl", rows), num_negatives=0),
                           tmp_path / "c" / "train", tmp_path / "c" / "eval").fingerprint
    assert first == again != changed


def test_mining_with_a_real_model_writes_negative_columns(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "pairs.jsonl", make_rows())
    config = config_for(path, num_negatives=2)
    stats = prepare(config, tmp_path / "train", tmp_path / "eval", model=str(tiny_model_dir), max_seq_length=32)
    train = read(tmp_path / "train" / artifacts.TRAIN_FILE)
    assert all(set(row) == {"anchor", "positive", "negative_1", "negative_2"} for row in train)
    # "... described here: <topic> <question type> details ...": never the same topic and question type.
    topic_and_type = lambda text: tuple(text.split(":")[-1].split()[:2])  # noqa: E731
    assert all(topic_and_type(row["positive"]) not in (topic_and_type(row["negative_1"]), topic_and_type(row["negative_2"]))
               for row in train)
    assert stats.mining["queries"] == len(train) and stats.token_lengths["tokenizer"] == str(tiny_model_dir)
