"""Stage 3, Matryoshka evaluation: base vs fine-tuned at every dim x storage precision (`evaluator`),
from one encode per model; retrieval metrics (`metrics`), search and quantisation (`search`),
tables and KFP metric names (`tables`), the HTML/Markdown report (`report`)."""
