"""Shifted probes: BEIR collections that look past the training template (issue 10).

The product's own evaluation set is the held-out test split, queried with the data's own question
template. Prep also writes these built-in probes from that same test split (data.shift_probes), under
eval_data/probes/<name>/, and the evaluation stage scores them as guard collections (the gate refuses a
candidate significantly worse than the base on any of them):

| probe | kind | queries | relevant | corpus |
| --- | --- | --- | --- | --- |
| `keyword` | query style | topic + a search-box word for the question type, shuffled ("ewing sarcoma prognosis"); without topic/type fields: the question's content words, shuffled | passages of that topic and type (or the question's own) | the evaluation corpus |
| `topic` | query style | the topic alone | every passage about it | the evaluation corpus |
| `lay` | query style | a consumer question frame around the topic in lay words ("can tissue cancer be cured"); without topic/type fields: the question with medical words replaced by lay ones | passages of that topic and type (or the question's own) | the evaluation corpus |
| `misspell` | query style | the question lower-cased, no "?", typos in words of 4+ letters | the question's passages | the evaluation corpus |
| `para` | forgetting | the `lay` query | the test *questions* of that topic and type | those questions |
| `halves` | forgetting | the second half of a passage | its first half | the first halves |

Query-style probes carry a copy of the evaluation corpus (identical texts in the same order), so the
evaluation encodes it once per model; forgetting probes (retrieval the base model already does well)
have their own. `topic` and `para` need the topic and type fields (MedQuAD's focus / qtype) and are
skipped without them. The lexicons below are small, hand-written and used only here: the training
augmentation (medembed/train/augment.py) learns its words from the data, so these probes are not in
the augmented model's training distribution.

The bench's hold-out probes (leave-source-out, dev probes; medembed/prep/holdout.py) use the same
query styles. Nothing here imports KFP or reads paths outside its arguments.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from pathlib import Path

from ..artifacts import CORPUS_FILE, PROBES_DIR, PROBES_MANIFEST_FILE, QRELS_FILE, QUERIES_FILE, write_jsonl
from . import dedup
QUERY_STYLE = "query style"
FORGETTING = "forgetting"
KINDS = {"keyword": QUERY_STYLE, "topic": QUERY_STYLE, "lay": QUERY_STYLE, "misspell": QUERY_STYLE,
         "para": FORGETTING, "halves": FORGETTING}
DESCRIPTIONS = {
    "keyword": "search-box queries: topic + a keyword for the question type, shuffled",
    "topic": "the topic alone (every passage about it is relevant)",
    "lay": "patients' wording: consumer question frames, lay synonyms",
    "misspell": "typing noise: the question lower-cased, no '?', typos",
    "para": "forgetting: lay question -> the test questions of that topic and type",
    "halves": "forgetting: second half of a passage -> its first half",
}

# Question type -> search-box keywords (never words of MedQuAD's templates for that type).
QTYPE_KEYWORDS = {
    "information": ["overview", "meaning", "definition", "explained"],
    "symptoms": ["signs", "warning signs", "what it feels like", "early signs"],
    "treatment": ["therapy", "cure", "how to treat", "medication options"],
    "causes": ["cause", "why it happens", "reason", "origin"],
    "inheritance": ["hereditary", "runs in families", "passed to children", "genetic risk for kids"],
    "frequency": ["how common", "prevalence", "number of cases", "how rare"],
    "genetic changes": ["gene mutation", "which gene", "dna change", "mutated gene"],
    "exams and tests": ["test", "diagnosis", "how doctors check", "screening"],
    "outlook": ["prognosis", "life expectancy", "survival", "long term"],
    "susceptibility": ["risk factors", "who gets it", "chance of getting", "at risk"],
    "stages": ["stage", "staging", "how advanced", "grades"],
    "research": ["clinical trials", "new studies", "latest research", "experimental therapy"],
    "prevention": ["avoid", "lower risk", "protect against", "prevent"],
    "complications": ["complications", "problems later", "side effects"],
}
# Question type -> consumer question frames ({} is the topic in lay words).
LAY_FRAMES = {
    "information": ["my doctor said i have {}, what does that mean", "can you explain {} in simple words",
                    "what kind of illness is {}"],
    "symptoms": ["how do i know if i have {}", "what would i notice with {}", "does {} make you feel sick"],
    "treatment": ["can {} be cured", "what can doctors do for {}", "is there medicine for {}"],
    "causes": ["how do you get {}", "why do people get {}", "what makes someone develop {}"],
    "inheritance": ["will my kids get {} from me", "does {} run in the family", "can parents pass {} to a baby"],
    "frequency": ["how many people have {}", "is {} rare", "how often does {} happen"],
    "genetic changes": ["which gene is broken in {}", "what dna problem leads to {}", "is {} caused by a gene"],
    "exams and tests": ["how do doctors find out about {}", "which test shows {}", "how is {} checked"],
    "outlook": ["will i get better from {}", "how long can you live with {}", "what happens to people with {}"],
    "susceptibility": ["am i likely to get {}", "who is more likely to have {}", "what raises the chance of {}"],
    "stages": ["how bad can {} get", "how do doctors say how far {} has spread", "what are the levels of {}"],
    "research": ["are there new treatments being tested for {}", "is anyone studying {}",
                 "can i join a study on {}"],
    "prevention": ["how can i stop myself getting {}", "can {} be avoided", "what lowers my risk of {}"],
    "complications": ["what problems can {} lead to", "can {} cause other problems"],
}
DEFAULT_FRAMES = ["what should i know about {}", "tell me about {}"]
# Medical word -> lay word, applied to whole words (lower case).
LAY_TERMS = {
    "hypertension": "high blood pressure", "hypotension": "low blood pressure", "carcinoma": "cancer",
    "neoplasm": "tumor", "neoplasms": "tumors", "malignant": "cancerous", "benign": "harmless",
    "renal": "kidney", "nephropathy": "kidney disease", "hepatic": "liver", "hepatitis": "liver inflammation",
    "cardiac": "heart", "cardiomyopathy": "heart muscle disease", "myocardial": "heart muscle",
    "infarction": "attack", "pulmonary": "lung", "respiratory": "breathing", "cerebral": "brain",
    "cerebellar": "brain", "neural": "nerve", "neuropathy": "nerve damage", "gastric": "stomach",
    "intestinal": "gut", "colorectal": "colon", "dermatitis": "skin rash", "cutaneous": "skin",
    "ocular": "eye", "optic": "eye", "retinal": "eye", "auditory": "hearing", "otitis": "ear infection",
    "osteoporosis": "weak bones", "arthritis": "joint pain", "myopathy": "muscle disease",
    "muscular": "muscle", "dystrophy": "wasting", "anemia": "low blood count", "leukemia": "blood cancer",
    "lymphoma": "lymph cancer", "melanoma": "skin cancer", "sarcoma": "tissue cancer",
    "thrombosis": "blood clot", "embolism": "blood clot", "hemorrhage": "bleeding", "edema": "swelling",
    "syndrome": "condition", "disorder": "problem", "deficiency": "lack", "insufficiency": "weakness",
    "congenital": "inborn", "hereditary": "inherited", "pediatric": "child", "juvenile": "child",
    "acute": "sudden", "chronic": "long-term", "idiopathic": "unexplained", "diabetes": "sugar disease",
    "mellitus": "", "obesity": "being overweight", "influenza": "flu", "pneumonia": "lung infection",
    "tuberculosis": "tb", "vascular": "blood vessel", "hematologic": "blood", "endocrine": "hormone",
    "thyroid": "thyroid gland", "oral": "mouth", "dental": "teeth", "urinary": "bladder",
    "hepatocellular": "liver", "bronchitis": "chest infection", "rhinitis": "runny nose",
    "dysplasia": "abnormal growth", "atrophy": "shrinking", "paralysis": "loss of movement",
    "seizures": "fits", "epilepsy": "seizure disorder", "alopecia": "hair loss", "pruritus": "itching",
}
# Words left out of the keyword fallback (questions without topic/type fields).
QUESTION_WORDS = frozenset(
    "a an the of for to in on at by with about from and or is are was were be been being do does did have has had "
    "what which who whom whose how why when where can could should would will may might must there this that "
    "these those it its i you your my me we our they them as if any some".split()
)
_WORD = re.compile(r"[\w'-]+")
_KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"
TYPO_RATE = 0.35


# ------------------------------------------------------------------ query styles


def lay_words(text: str) -> tuple[str, int]:
    """`text` lower-cased with LAY_TERMS applied to whole words, and how many words were replaced."""
    out, replaced = [], 0
    for word in _WORD.findall(text.lower()):
        if word in LAY_TERMS:
            replaced += 1
            word = LAY_TERMS[word]
        if word:
            out.append(word)
    return " ".join(out), replaced


def keyword_query(topic: str, qtype: str, rng: random.Random) -> str:
    keyword = rng.choice(QTYPE_KEYWORDS.get(qtype.lower(), ["info"]))
    parts = [topic.lower(), keyword]
    rng.shuffle(parts)
    return " ".join(parts)


def content_keywords(question: str, rng: random.Random) -> str:
    """The question's words without question and function words, lower-cased and shuffled ("" if < 2)."""
    words = [w for w in _WORD.findall(question.lower()) if w not in QUESTION_WORDS]
    if len(words) < 2:
        return ""
    rng.shuffle(words)
    return " ".join(words)


def lay_query(topic: str, qtype: str, rng: random.Random) -> str:
    frame = rng.choice(LAY_FRAMES.get(qtype.lower(), DEFAULT_FRAMES))
    return frame.format(lay_words(topic)[0] or topic.lower())


def misspell(text: str, rng: random.Random, rate: float = TYPO_RATE) -> str:
    """Lower-cased, no question mark, and each word of 4+ letters edited with probability `rate`
    (swap two letters, drop one, double one or hit a neighbouring key); at least one edit."""
    words = text.lower().replace("?", " ").split()
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    chosen = [i for i in candidates if rng.random() < rate] or ([rng.choice(candidates)] if candidates else [])
    for i in chosen:
        w = words[i]
        p = rng.randrange(1, len(w) - 1)
        kind = rng.randrange(4)
        if kind == 0:
            w = w[:p] + w[p + 1] + w[p] + w[p + 2:]
        elif kind == 1:
            w = w[:p] + w[p + 1:]
        elif kind == 2:
            w = w[:p] + w[p] + w[p:]
        else:
            k = _KEYBOARD.find(w[p])
            w = w[:p] + (_KEYBOARD[(k + 1) % len(_KEYBOARD)] if k >= 0 else w[p]) + w[p + 1:]
        words[i] = w
    return " ".join(words)


def split_halves(text: str, max_words: int = 80) -> tuple[str, str] | None:
    """(first half, second half) of a passage at a sentence boundary near its middle, each cut to
    `max_words`; None when the passage is too short (under 40 words, or a half under 15)."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    if len(sentences) < 2 or len(text.split()) < 40:
        return None
    words_before, cut = 0, 1
    total = len(text.split())
    for i, s in enumerate(sentences[:-1], 1):
        words_before += len(s.split())
        cut = i
        if words_before >= total / 2:
            break
    first, second = " ".join(sentences[:cut]), " ".join(sentences[cut:])
    if len(first.split()) < 15 or len(second.split()) < 15:
        return None
    return " ".join(first.split()[:max_words]), " ".join(second.split()[:max_words])


# ------------------------------------------------------------------ collections


class Collection:
    """Queries and qrels under construction; identical query texts (by dedup.exact_key) merge and
    their relevant passages are united."""

    def __init__(self):
        self.ids: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self.qrels: dict[str, set[str]] = defaultdict(set)

    def add(self, text: str, relevant) -> None:
        key = dedup.exact_key(text)
        if not key or not relevant:
            return
        qid = self.ids.setdefault(key, f"q{len(self.ids)}")
        self.texts.setdefault(qid, text)
        self.qrels[qid].update(relevant)

    def write(self, folder: Path, corpus: list[dict], max_queries: int = 0, seed: int = 13,
              language: dict[str, str] | None = None) -> int:
        """The BEIR folder (queries.jsonl, corpus.jsonl rows {"_id", "text"}, qrels.tsv); at most
        `max_queries` queries (a seeded sample, 0 = all). Returns the number of queries written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        qids = [qid for qid in self.ids.values() if self.qrels[qid]]
        if max_queries and len(qids) > max_queries:
            qids = sorted(random.Random(seed).sample(qids, max_queries), key=lambda q: int(q[1:]))
        write_jsonl(folder / QUERIES_FILE, ({"_id": qid, "text": self.texts[qid],
                                              **({"language": language[qid]} if language and qid in language else {})}
                                             for qid in qids))
        write_jsonl(folder / CORPUS_FILE, corpus)
        with open(folder / QRELS_FILE, "w", encoding="utf-8") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for qid in qids:
                handle.writelines(f"{qid}\t{pid}\t1\n" for pid in sorted(self.qrels[qid]))
        return len(qids)


def build_shift_probes(test_pairs: list[dict], corpus: list[dict], names, out_dir: Path, max_queries: int = 0,
                       seed: int = 13) -> dict[str, dict]:
    """Write the probes `names` (config.SHIFT_PROBES) built from the test split under `out_dir` and
    a manifest (probes.json); returns {name: {"kind", "queries", "corpus", "shares_main_corpus",
    "description"}} for the probes written (a probe with no usable query is left out, and says why
    in the manifest's "skipped").

    `test_pairs` carry "query", "passage", "qid", "pid" (their ids in the evaluation set, set by
    ir_set.build_ir_set), and "topic" / "qtype" ("" when the data has no such fields); `corpus` is
    the evaluation set's corpus rows (query-style probes copy it unchanged, so the evaluation
    encodes it once per model)."""
    out_dir = Path(out_dir)
    qrels_of: dict[str, set[str]] = defaultdict(set)
    for pair in test_pairs:
        qrels_of[pair["qid"]].add(pair["pid"])
    by_topic: dict[str, set[str]] = defaultdict(set)
    by_topic_type: dict[tuple[str, str], set[str]] = defaultdict(set)
    for pair in test_pairs:
        if pair.get("topic"):
            by_topic[pair["topic"].lower()].add(pair["pid"])
            by_topic_type[(pair["topic"].lower(), pair.get("qtype", "").lower())].add(pair["pid"])
    built: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for name in names:
        rng = random.Random(f"{seed}-{name}")
        collection = Collection()
        probe_corpus = corpus
        if name == "para":
            probe_corpus, question_ids = [], {}
            by_tt_question: dict[tuple[str, str], set[str]] = defaultdict(set)
            for pair in test_pairs:
                if not pair.get("topic"):
                    continue
                key = dedup.exact_key(pair["query"])
                if key not in question_ids:
                    question_ids[key] = f"d{len(question_ids)}"
                    probe_corpus.append({"_id": question_ids[key], "text": pair["query"]})
                by_tt_question[(pair["topic"].lower(), pair.get("qtype", "").lower())].add(question_ids[key])
        elif name == "halves":
            probe_corpus, seen_pids = [], set()
        for pair in test_pairs:
            topic, qtype = pair.get("topic", ""), pair.get("qtype", "")
            tt = (topic.lower(), qtype.lower())
            if name == "keyword":
                if topic and qtype:
                    collection.add(keyword_query(topic, qtype, rng), by_topic_type[tt])
                else:
                    collection.add(content_keywords(pair["query"], rng), qrels_of[pair["qid"]])
            elif name == "topic":
                if topic:
                    collection.add(topic.lower(), by_topic[tt[0]])
            elif name == "lay":
                if topic:
                    collection.add(lay_query(topic, qtype, rng), by_topic_type[tt])
                else:
                    text, replaced = lay_words(pair["query"])
                    if replaced:
                        collection.add(text, qrels_of[pair["qid"]])
            elif name == "misspell":
                collection.add(misspell(pair["query"], rng), qrels_of[pair["qid"]])
            elif name == "para":
                if topic:
                    collection.add(lay_query(topic, qtype, rng), by_tt_question[tt])
            elif name == "halves":
                if pair["pid"] in seen_pids:
                    continue
                seen_pids.add(pair["pid"])
                halves = split_halves(pair["passage"])
                if halves is None:
                    continue
                pid = f"h{len(probe_corpus)}"
                probe_corpus.append({"_id": pid, "text": halves[0]})
                collection.add(halves[1], {pid})
            else:
                raise ValueError(f"unknown shift probe {name!r}; known: {', '.join(KINDS)}")
        if not collection.ids:
            skipped[name] = ("no pair has a topic field" if name in ("topic", "para") else
                             "no usable query (passages too short)" if name == "halves" else "no usable query")
            continue
        n = collection.write(out_dir / name, probe_corpus, max_queries, seed)
        built[name] = {"kind": KINDS[name], "queries": n, "corpus": len(probe_corpus),
                       "shares_main_corpus": probe_corpus is corpus, "description": DESCRIPTIONS[name]}
    if built or skipped:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / PROBES_MANIFEST_FILE).write_text(json.dumps({"probes": built, "skipped": skipped}, indent=2))
    return built
