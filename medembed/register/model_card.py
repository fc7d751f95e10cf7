"""Model card: what a team needs to index with the model correctly and to trust its numbers."""

from __future__ import annotations

from ..evaluate.tables import comparison_markdown

MEDQUAD_ATTRIBUTION = (
    "Training and evaluation data derived from MedQuAD (Ben Abacha & Demner-Fushman, "
    '"A Question-Entailment Approach to Question Answering", BMC Bioinformatics 2019), licensed CC BY 4.0.'
)


def data_licence(source: str) -> str:
    """MedQuAD's CC BY 4.0 requires attribution wherever models trained on it are shared."""
    if "medquad" in source.lower():
        return MEDQUAD_ATTRIBUTION
    return f"Trained on `{source}`: check that data's licence before sharing this model."


def index_contract(train_info: dict) -> dict:
    """What a vector index built with this model must respect; stored in the registry too."""
    return {
        "query_prompt": train_info["query_prompt"],
        "passage_prompt": train_info["passage_prompt"],
        "similarity": "cosine",
        "normalize_after_truncation": True,
        "valid_dims": train_info["matryoshka_dims"],
    }


def methods_text(train_info: dict) -> str:
    """Query augmentation and WiSE-FT, when the training used them (issue 10)."""
    parts = []
    if train_info.get("augmented_rows"):
        parts.append(f"{train_info['augmented_rows']} extra rows of query augmentation from the data")
    if train_info.get("wise_alpha", 1.0) < 1.0:
        parts.append(f"weights mixed with the base model (WiSE-FT, {train_info['wise_alpha']:g} x fine-tuned + "
                     f"{1 - train_info['wise_alpha']:g} x base)")
    return (" With " + "; ".join(parts) + ".") if parts else ""


def render(model_name: str, version: int, train_info: dict, results: dict, data_stats: dict, decision_markdown: str) -> str:
    contract = index_contract(train_info)
    dims = ", ".join(str(d) for d in contract["valid_dims"])
    smallest = contract["valid_dims"][-1]
    return f"""---
library_name: sentence-transformers
base_model: {train_info['base_model']}
tags: [sentence-transformers, matryoshka, medical, retrieval]
---
# {model_name} v{version:04d}

Fine-tuned from `{train_info['base_model']}` with MatryoshkaLoss(MultipleNegativesRankingLoss) on
{train_info['train_pairs']} medical question/passage pairs ({train_info['steps']} steps, {train_info['epochs']} epoch(s),
device {train_info['device']}, bf16={train_info['bf16']}).{methods_text(train_info)}

## Promotion gate
{decision_markdown}

## Using it in a vector index
- Query prompt: `{contract['query_prompt']!r}`, passage prompt: `{contract['passage_prompt']!r}` (stored in the model;
  `encode_query` / `encode_document` apply them).
- Valid dimensions: {dims}. Similarity: cosine; re-normalise after truncating.

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("<this folder>", truncate_dim={smallest})
q = model.encode_query(["What are the symptoms of anemia?"], normalize_embeddings=True)
```

## Evaluation (held-out split built by data prep)
{comparison_markdown(results)}
Data fingerprint: `{data_stats.get('fingerprint', '')}`; evaluation set fingerprint: `{results.get('eval_fingerprint', '')}`.

## Data and licence
{data_licence(data_stats.get('source', ''))}
Not a medical device; retrieval quality was measured on the split above and on the guard collections the gate
lists (built-in shifted probes of that split, extra collections) only.
"""
