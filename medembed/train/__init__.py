"""Stage 2, GPU training: MatryoshkaLoss around (Cached)MultipleNegativesRankingLoss through
sentence-transformers' trainer (`recipe`), one process per GPU (`launcher`), checkpoints in the
object store, LoRA/QLoRA, dev evaluation and training curves."""
