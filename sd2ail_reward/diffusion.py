"""DDPM pieces of the diffusion discriminator: schedule, eps-network, losses, reverse sampler.

Pure torch: no I/O, no global RNG. Every random draw takes an explicit `torch.Generator`.
Shapes: B batch, D input dim, T diffusion steps, K noise draws per step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sd2ail_reward.mish import Mish, mish_


class NoiseSchedule(nn.Module):
    """Linear-beta DDPM schedule (DiffAIL: `np.linspace(1e-4, 2e-2, T)`), kept as buffers."""

    betas_T: Tensor
    alphas_cumprod_T: Tensor
    sqrt_ac_T: Tensor
    sqrt_one_minus_ac_T: Tensor
    sqrt_recip_ac_T: Tensor
    sqrt_recipm1_ac_T: Tensor
    post_coef_x0_T: Tensor
    post_coef_xt_T: Tensor
    post_log_var_T: Tensor

    def __init__(self, n_timesteps: int, beta_start: float, beta_end: float) -> None:
        super().__init__()
        if n_timesteps < 1:
            raise ValueError(f"n_timesteps must be >= 1, got {n_timesteps}")
        self.n_timesteps = n_timesteps
        betas = torch.linspace(beta_start, beta_end, n_timesteps, dtype=torch.float64)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        buffers = {
            "betas_T": betas,
            "alphas_cumprod_T": ac,
            "sqrt_ac_T": ac.sqrt(),
            "sqrt_one_minus_ac_T": (1.0 - ac).sqrt(),
            "sqrt_recip_ac_T": (1.0 / ac).sqrt(),
            "sqrt_recipm1_ac_T": (1.0 / ac - 1.0).sqrt(),
            "post_coef_x0_T": betas * ac_prev.sqrt() / (1.0 - ac),
            "post_coef_xt_T": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
            "post_log_var_T": post_var.clamp(min=1e-20).log(),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float())

    def q_sample(self, x0_BD: Tensor, t_B: Tensor, eps_BD: Tensor) -> Tensor:
        """Forward noising x_t = sqrt(ac_t) x0 + sqrt(1 - ac_t) eps."""
        return self.sqrt_ac_T[t_B, None] * x0_BD + self.sqrt_one_minus_ac_T[t_B, None] * eps_BD


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of the integer timestep."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.dim = dim

    def forward(self, t_B: Tensor) -> Tensor:
        half = self.dim // 2
        scale = math.log(10000.0) / max(half - 1, 1)
        freqs = torch.exp(torch.arange(half, device=t_B.device, dtype=torch.float32) * -scale)
        angles = t_B.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Denoiser(nn.Module):
    """eps-network of DiffAIL (`ddpm_disc/diffusion/model.py`): 3 x H Mish MLP on [x_t, emb(t)]."""

    def __init__(self, input_dim: int, hidden_dim: int, time_embed_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(time_embed_dim),
            nn.Linear(time_embed_dim, time_embed_dim * 2),
            Mish(),
            nn.Linear(time_embed_dim * 2, time_embed_dim),
        )
        self.body = nn.Sequential(
            nn.Linear(input_dim + time_embed_dim, hidden_dim),
            Mish(),
            nn.Linear(hidden_dim, hidden_dim),
            Mish(),
            nn.Linear(hidden_dim, hidden_dim),
            Mish(),
            nn.Linear(hidden_dim, input_dim),
        )

    def forward(self, x_t_BD: Tensor, t_B: Tensor) -> Tensor:
        return self.body(torch.cat([x_t_BD, self.time_mlp(t_B)], dim=-1))


def reset_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draw every Linear layer with torch's default init, from `generator` instead of the
    global RNG, so that a seeded learner never touches global state."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            if layer.bias is not None:
                bound = 1.0 / math.sqrt(layer.weight.shape[1])
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def eps_mse_one_step(
    denoiser: Denoiser, schedule: NoiseSchedule, x0_BD: Tensor, generator: torch.Generator
) -> Tensor:
    """Per-item eps MSE with ONE random t and ONE noise draw per item: the m of
    D_train = exp(-m). Differentiable w.r.t. the denoiser and x0."""
    batch = x0_BD.shape[0]
    t_B = torch.randint(0, schedule.n_timesteps, (batch,), generator=generator, device=x0_BD.device)
    eps_BD = torch.randn(x0_BD.shape, generator=generator, device=x0_BD.device)
    eps_hat_BD = denoiser(schedule.q_sample(x0_BD, t_B, eps_BD), t_B)
    return (eps_hat_BD - eps_BD).pow(2).mean(dim=-1)


def eps_sq_err_all_steps(
    denoiser: Denoiser, schedule: NoiseSchedule, x0_BD: Tensor, noise_KTD: Tensor
) -> Tensor:
    """Squared eps errors at every timestep, for K given noise draws per step.

    One batched forward over B x K x T rows (never a Python loop over t). Returns (B, K*T, D).
    """
    n_draws, n_steps, dim = noise_KTD.shape
    batch = x0_BD.shape[0]
    t_R = torch.arange(n_steps, device=x0_BD.device).repeat(n_draws)  # R = K*T rows per item
    eps_RD = noise_KTD.reshape(n_draws * n_steps, dim)
    x_t_BRD = (
        schedule.sqrt_ac_T[t_R, None] * x0_BD[:, None, :]
        + schedule.sqrt_one_minus_ac_T[t_R, None] * eps_RD[None]
    )
    rows = n_draws * n_steps
    t_all = t_R.repeat(batch)
    eps_hat = denoiser(x_t_BRD.reshape(batch * rows, dim), t_all).reshape(batch, rows, dim)
    return (eps_hat - eps_RD[None]).pow(2)


CPU_BLOCK_ROWS = 2048
"""Rows the CPU forward-only paths (reverse chain, D_reward) push through the network together.

A (2048, 256) float32 activation is 2 MiB, so a block's activations stay in cache from one
layer to the next; a 12,800-row chain (13 MiB per activation) or a 4,096-item D_reward chunk
(40,960 rows, 42 MiB) streams every elementwise pass through memory and re-faults freshly
mapped pages on every allocation (measured: a third or more of a generation round's CPU time
went to page faults; benchmarks/README.md). Each row's result does not depend on the
rows computed beside it, so blocking changes no value. CUDA keeps whole batches."""


def row_blocks(n_rows: int, device: torch.device, rows_per_item: int = 1) -> list[slice]:
    """Slices of `n_rows` items of `rows_per_item` network rows each, in blocks of about
    `CPU_BLOCK_ROWS` network rows on the CPU (one block elsewhere). The blocks are balanced,
    never a ragged tail of a few rows: the CPU matmul kernels for 1-3 rows round differently
    from those for larger batches, which blocking must not change."""
    per_block = max(1, CPU_BLOCK_ROWS // max(rows_per_item, 1))
    if device.type != "cpu" or n_rows <= per_block:
        return [slice(0, n_rows)]
    n_blocks = -(-n_rows // per_block)
    base, extra = divmod(n_rows, n_blocks)  # the first `extra` blocks hold one row more
    starts = [i * base + min(i, extra) for i in range(n_blocks + 1)]
    return [slice(starts[i], starts[i + 1]) for i in range(n_blocks)]


def _denoise_no_grad(denoiser: Denoiser, x_BD: Tensor, temb_1E: Tensor) -> Tensor:
    """`denoiser(x, t)` for rows that share one timestep, given that step's embedding: the same
    values as the module call (the embedding of a step does not depend on the row), with the
    activations updated in place (forward only)."""
    h = torch.cat([x_BD, temb_1E.expand(x_BD.shape[0], -1)], dim=-1)
    for layer in denoiser.body:
        h = layer(h) if isinstance(layer, nn.Linear) else mish_(h)
    return h


def _chain_step(
    schedule: NoiseSchedule,
    step: int,
    x_BD: Tensor,
    eps_hat_BD: Tensor,
    noise_BD: Tensor | None,
    clamp_dims: slice | None,
    clamp_value: float,
) -> Tensor:
    """x_{t-1} from x_t and the predicted noise (posterior mean, plus noise for t > 0)."""
    x0_hat = schedule.sqrt_recip_ac_T[step] * x_BD - schedule.sqrt_recipm1_ac_T[step] * eps_hat_BD
    if clamp_dims is not None:
        x0_hat[:, clamp_dims] = x0_hat[:, clamp_dims].clamp(-clamp_value, clamp_value)
    mean = schedule.post_coef_x0_T[step] * x0_hat + schedule.post_coef_xt_T[step] * x_BD
    if noise_BD is None:
        return mean
    return mean + (0.5 * schedule.post_log_var_T[step]).exp() * noise_BD


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    n_samples: int,
    generator: torch.Generator,
    *,
    clamp_dims: slice | None = None,
    clamp_value: float = 1.0,
) -> Tensor:
    """Ancestral DDPM reverse chain from x ~ N(0, I), batched over `n_samples`.

    The x0 prediction of `clamp_dims` (the action dims, and only those) is clamped to
    +-clamp_value at every step and at the end, as the reference clamps its actions.

    All noise is drawn first, in the order and shapes of a step-by-step chain over the whole
    batch (x_T, then one (N, D) draw per step T-1..1). On the CPU the rows are then blocked
    (`row_blocks`) and each block runs all T steps while it is in cache, which changes no
    value; other devices run the whole batch step by step.
    """
    device = schedule.betas_T.device
    dim = denoiser.input_dim
    x_ND = torch.randn((n_samples, dim), generator=generator, device=device)
    steps = list(reversed(range(schedule.n_timesteps)))
    noise = {
        step: torch.randn((n_samples, dim), generator=generator, device=device)
        for step in steps
        if step > 0
    }
    if device.type != "cpu":
        for step in steps:
            t_N = torch.full((n_samples,), step, dtype=torch.long, device=device)
            eps_hat = denoiser(x_ND, t_N)
            x_ND = _chain_step(
                schedule, step, x_ND, eps_hat, noise.get(step), clamp_dims, clamp_value
            )
        if clamp_dims is not None:
            x_ND[:, clamp_dims] = x_ND[:, clamp_dims].clamp(-clamp_value, clamp_value)
        return x_ND
    # One embedding row per step, computed in a batch of up to 16 identical rows (as many as
    # the chain has when fewer) so that the kernel, and so the rounding, is the batched one.
    temb = {
        step: denoiser.time_mlp(
            torch.full((min(n_samples, 16),), step, dtype=torch.long, device=device)
        )[:1]
        for step in steps
    }
    for rows in row_blocks(n_samples, device):
        x_BD = x_ND[rows]
        for step in steps:
            eps_hat = _denoise_no_grad(denoiser, x_BD, temb[step])
            step_noise = noise[step][rows] if step > 0 else None
            x_BD = _chain_step(schedule, step, x_BD, eps_hat, step_noise, clamp_dims, clamp_value)
        if clamp_dims is not None:
            x_BD[:, clamp_dims] = x_BD[:, clamp_dims].clamp(-clamp_value, clamp_value)
        x_ND[rows] = x_BD
    return x_ND
