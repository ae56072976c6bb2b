"""Serving many prompts from one frozen model: loading several adapters into one peft model, mixed batches
(`adapter_names=`, one adapter per row; the forward itself is `peft_boundary.prompted_calls`) and ensembles."""

from .ensemble import EnsembleScores, score_ensemble
from .loading import load_adapters

__all__ = ["EnsembleScores", "load_adapters", "score_ensemble"]
