"""Pseudo-expert generation with SD2AIL's dynamic threshold.

The diffusion discriminator generates candidate (action, obs) rows; a candidate becomes a
pseudo-expert iff its D_reward exceeds the threshold tau = mean D_reward on the current expert
batch (strict >, as the reference). Candidates are generated in bulk and amortised over many
discriminator updates instead of a 256-row chain on every update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sd2ail_reward.discriminator import DiffusionDiscriminator, MLPDiscriminator

_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class GenerationResult:
    """Accepted rows of one generation round and the figures to monitor it."""

    accepted_ND: Tensor
    n_candidates: int
    threshold: float

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_ND.shape[0] / max(self.n_candidates, 1)


def d_reward(disc: DiffusionDiscriminator | MLPDiscriminator, x_ND: Tensor) -> Tensor:
    """D_reward in chunks, so a large candidate set never builds one huge B x T batch."""
    parts = [
        disc.reward_d(x_ND[start : start + _CHUNK_ROWS])
        for start in range(0, x_ND.shape[0], _CHUNK_ROWS)
    ]
    return torch.cat(parts) if parts else x_ND.new_zeros((0,))


def dynamic_threshold(disc: DiffusionDiscriminator, x_expert_BD: Tensor) -> float:
    """tau = mean D_reward over the current expert minibatch (SD2AIL eq. 4 in code form)."""
    if x_expert_BD.shape[0] == 0:
        raise ValueError("dynamic threshold needs a non-empty expert batch")
    return float(d_reward(disc, x_expert_BD).mean())


def filter_candidates(
    disc: DiffusionDiscriminator, candidates_ND: Tensor, threshold: float
) -> GenerationResult:
    """Keep the candidates whose D_reward is strictly above `threshold`."""
    keep_N = d_reward(disc, candidates_ND) > threshold
    return GenerationResult(
        accepted_ND=candidates_ND[keep_N],
        n_candidates=int(candidates_ND.shape[0]),
        threshold=threshold,
    )


def generate_pseudo_experts(
    disc: DiffusionDiscriminator,
    *,
    n_candidates: int,
    threshold: float,
    generator: torch.Generator,
    max_action: float,
) -> GenerationResult:
    """Sample `n_candidates` from the reverse chain (action dims clamped to +-max_action, the
    observation dims never) and keep those that pass the threshold."""
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    candidates = disc.sample(n_candidates, generator, max_action)
    return filter_candidates(disc, candidates, threshold)
