"""medembed: fine-tune sentence-embedding models for medical retrieval, evaluate every
Matryoshka dimension, and register the winners. Pure logic; KFP adapters live in `components/`."""

__version__ = "0.1.0"
