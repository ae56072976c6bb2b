"""The fluency loss (the PEZ paper's fluency variant): how natural a prompt's own tokens are to the model."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..method.projection import module_device


def with_fluency(weight: float, task_loss: torch.Tensor, fluency_loss: torch.Tensor) -> torch.Tensor:
    """λ · (LM loss of the prompt's own tokens) + (1 − λ) · task loss, with λ = `weight`."""
    return weight * fluency_loss + (1 - weight) * task_loss


def prompt_lm_loss(model: nn.Module, prompt_embeds: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of the prompt's own tokens (differentiable w.r.t. `prompt_embeds`)."""
    if token_ids.numel() < 2:
        return prompt_embeds.sum() * 0.0
    logits = model(inputs_embeds=prompt_embeds[None].to(module_device(model))).logits[0, :-1]
    return F.cross_entropy(logits.float(), token_ids[1:].to(logits.device))


@torch.no_grad()
def prompt_lm_losses(model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """[C] the same loss for C token prompts [C, n] at once."""
    if token_ids.shape[1] < 2:
        return torch.zeros(token_ids.shape[0], device=token_ids.device)
    logits = model(input_ids=token_ids.to(module_device(model))).logits[:, :-1].float()
    targets = token_ids[:, 1:].to(logits.device)
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(1)


@torch.no_grad()
def perplexity(model: nn.Module, token_ids: torch.Tensor) -> float | None:
    """The model's perplexity on a token prompt [n] (None for fewer than two tokens)."""
    if token_ids.numel() < 2:
        return None
    return math.exp(prompt_lm_losses(model, token_ids[None])[0].item())
