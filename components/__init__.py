"""Thin typed KFP adapters over `medembed.stages`: parameters and artifacts in, a call, artifacts out."""

from .evaluate import evaluate_models
from .prep import prep_data
from .register import register_model
from .train import train_model

__all__ = ["prep_data", "train_model", "evaluate_models", "register_model"]
