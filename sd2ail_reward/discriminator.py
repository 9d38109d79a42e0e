"""Discriminators behind one protocol, and the BCE update they share.

`DiffusionDiscriminator` is DiffAIL/SD2AIL's D(x) = exp(-diffusion loss); `MLPDiscriminator` is
the GAIL/DAC logistic baseline. Both expose D through logs, `log D` and `log(1 - D)`, so the loss
and the reward `-log(1 - D)` are computed without ever forming `log(1 - x)` of a rounded x.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd2ail_reward.config import DiffusionConfig, DiscriminatorConfig
from sd2ail_reward.diffusion import (
    Denoiser,
    NoiseSchedule,
    eps_mse_one_step,
    eps_sq_err_all_steps,
    reset_parameters,
    row_blocks,
    sample,
)
from sd2ail_reward.mish import mish_

_TINY = 1e-30  # floor of 1 - D_reward in float32: caps the reward at -log(1e-30) ~ 69


class Discriminator(Protocol):
    """What the learner needs from a discriminator."""

    compute_dtype: str
    """"float32" or "bfloat16" (CPU autocast of its forwards; see DiscriminatorConfig)."""

    def parameters(self, recurse: bool = True):  # type: ignore[no-untyped-def]
        ...

    def train_log_probs(self, x_BD: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(log D_train, log(1 - D_train)) per row, differentiable; may draw noise."""
        ...

    def reward_log_one_minus_d(self, x_BD: Tensor) -> Tensor:
        """log(1 - D_reward) per row, deterministic given the weights, finite."""
        ...

    def reward_d(self, x_BD: Tensor) -> Tensor:
        """D_reward per row, computed directly so that a tiny D does not round to 0."""
        ...


def _log_one_minus_exp_neg(m_B: Tensor) -> Tensor:
    """log(1 - exp(-m)) for m >= 0, stable near 0 (expm1) and for large m."""
    return torch.log((-torch.expm1(-m_B)).clamp_min(_TINY))


COMPUTE_DTYPES = ("float32", "bfloat16")


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX), as oneDNN sees it."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_compute_dtype(compute_dtype: str) -> str:
    """`compute_dtype` if this machine can honour it, else ValueError: bf16 autocast on a CPU
    without native bf16 is emulated and slower than float32, never what the option is for."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
    if compute_dtype == "bfloat16" and not cpu_bf16_supported():
        raise ValueError(
            "compute_dtype='bfloat16' needs a CPU with native bf16 (AVX512-BF16 or AMX); "
            "this one has neither: use float32"
        )
    return compute_dtype


def _autocast(compute_dtype: str, x: Tensor) -> contextlib.AbstractContextManager[object]:
    """CPU bf16 autocast for a forward on `x` when asked for; float32 (no-op) otherwise and on
    every other device, so the GPU path is unchanged."""
    if compute_dtype == "bfloat16" and x.device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class RewardScorer:
    """D_reward's forward with everything that depends only on the weights precomputed.

    For fixed weights the K*T timestep embeddings, the q_sample coefficients sqrt(ac_t), the
    noise terms sqrt(1 - ac_t) eps of the fixed reward-noise table and the time-embedding part
    of the first body Linear are constants. Per call only
    x_t = c_R x0 + n_RD, h = x_t W_x^T + h0_RH, the remaining Mish / Linear layers and the
    error reduction are left. Same values as `eps_sq_err_all_steps` up to float rounding
    (the first Linear's sum is split as x part + time part). Built under no_grad: scoring only.
    """

    def __init__(self, denoiser: Denoiser, schedule: NoiseSchedule, noise_KTD: Tensor) -> None:
        n_draws, n_steps, dim = noise_KTD.shape
        device = noise_KTD.device
        with torch.no_grad():
            t_R = torch.arange(n_steps, device=device).repeat(n_draws)
            eps_RD = noise_KTD.reshape(n_draws * n_steps, dim).detach().clone()
            first = denoiser.body[0]
            assert isinstance(first, nn.Linear)
            weight = first.weight.detach()
            temb_RE = denoiser.time_mlp(t_R)
            self.rows = n_draws * n_steps
            self.dim = dim
            self.eps_RD = eps_RD
            self.c_R1 = schedule.sqrt_ac_T[t_R, None].detach().clone()
            self.n_RD = schedule.sqrt_one_minus_ac_T[t_R, None] * eps_RD
            self.w_x_DH = weight[:, :dim].t().contiguous()
            self.h0_RH = torch.addmm(first.bias.detach(), temb_RE, weight[:, dim:].t())
            self.layers: list[tuple[Tensor, Tensor]] = []
            for layer in list(denoiser.body)[2::2]:
                assert isinstance(layer, nn.Linear)
                self.layers.append(
                    (layer.bias.detach().clone(), layer.weight.detach().t().contiguous())
                )

    def sq_err(self, x0_BD: Tensor) -> Tensor:
        """(B, K*T, D) squared eps errors, nan -> inf (call under no_grad / inference_mode)."""
        batch = x0_BD.shape[0]
        x_t = (self.c_R1 * x0_BD[:, None, :] + self.n_RD).reshape(batch * self.rows, self.dim)
        h = torch.mm(x_t, self.w_x_DH)
        h.view(batch, self.rows, -1).add_(self.h0_RH)
        for bias, weight_T in self.layers:
            h = torch.addmm(bias, mish_(h), weight_T)
        if h.dtype != self.eps_RD.dtype:  # bf16 autocast: the errors are taken in float32
            h = h.to(self.eps_RD.dtype)
        err = h.view(batch, self.rows, self.dim).sub_(self.eps_RD)
        return torch.nan_to_num_(err.mul_(err), nan=float("inf"), posinf=float("inf"))

    def _per_item(self, x0_BD: Tensor, reduce: Callable[[Tensor], Tensor]) -> Tensor:
        """`reduce(sq_err(x))` in blocks of about `CPU_BLOCK_ROWS` network rows (see
        `row_blocks`): the same values as one call, with the activations kept in cache."""
        blocks = row_blocks(x0_BD.shape[0], x0_BD.device, self.rows)
        if len(blocks) == 1:
            return reduce(self.sq_err(x0_BD))
        out_B = x0_BD.new_empty(x0_BD.shape[0])
        for rows in blocks:
            out_B[rows] = reduce(self.sq_err(x0_BD[rows]))
        return out_B

    def log_one_minus_d(self, x0_BD: Tensor) -> Tensor:
        """log(mean(1 - exp(-err^2))) per row, clamped at 1e-30."""
        return self._per_item(x0_BD, _log_mean_one_minus_exp_neg)

    def d(self, x0_BD: Tensor) -> Tensor:
        """mean(exp(-err^2)) per row."""
        return self._per_item(x0_BD, _mean_exp_neg)


def _log_mean_one_minus_exp_neg(sq_err_BRD: Tensor) -> Tensor:
    mean_expm1_B = sq_err_BRD.neg_().expm1_().mean(dim=(1, 2))
    return torch.log(mean_expm1_B.neg_().clamp_min_(_TINY))


def _mean_exp_neg(sq_err_BRD: Tensor) -> Tensor:
    return sq_err_BRD.neg_().exp_().mean(dim=(1, 2))


class DiffusionDiscriminator(nn.Module):
    """D_train(x) = exp(-eps-MSE at one random t); D_reward = mean over all T (and K fixed noise
    draws) and dims of exp(-eps error^2), as in DiffAIL's `p_losses` and `calc_reward`."""

    reward_noise_KTD: Tensor

    def __init__(
        self,
        input_dim: int,
        config: DiffusionConfig,
        generator: torch.Generator,
        *,
        action_dims: slice | None = None,
        input_clip: float = 1e4,
        compute_dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.action_dims = action_dims
        self.input_clip = input_clip
        self.compute_dtype = check_compute_dtype(compute_dtype)
        self.schedule = NoiseSchedule(config.n_timesteps, config.beta_start, config.beta_end)
        self.denoiser = Denoiser(input_dim, config.hidden_dim, config.time_embed_dim)
        reset_parameters(self.denoiser, generator)
        noise = torch.randn(
            (config.reward_noise_samples, config.n_timesteps, input_dim), generator=generator
        )
        self.register_buffer("reward_noise_KTD", noise)
        self._linears = [m for m in self.denoiser.modules() if isinstance(m, nn.Linear)]
        self._scorer_cache: tuple[tuple[tuple[int, int], ...], RewardScorer] | None = None

    def _clip(self, x_BD: Tensor) -> Tensor:
        return x_BD.clamp(-self.input_clip, self.input_clip)

    def train_log_probs(self, x_BD: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        with _autocast(self.compute_dtype, x_BD):
            m_B = eps_mse_one_step(self.denoiser, self.schedule, self._clip(x_BD), generator)
        m_B = torch.nan_to_num(m_B.float(), nan=float("inf"))
        return -m_B, _log_one_minus_exp_neg(m_B)

    def _reward_sq_err(self, x_BD: Tensor) -> Tensor:
        """Reference (unoptimised) squared errors of D_reward; `RewardScorer` must match it."""
        sq_err = eps_sq_err_all_steps(
            self.denoiser, self.schedule, self._clip(x_BD), self.reward_noise_KTD
        )
        return torch.nan_to_num(sq_err, nan=float("inf"), posinf=float("inf"))

    def _weights_key(self) -> tuple[tuple[int, int], ...]:
        """Changes whenever a parameter or buffer is replaced or modified in place (optimizer
        steps, load_state_dict, .to()): every in-place op bumps a tensor's version counter."""
        tensors = [
            self.reward_noise_KTD,
            self.schedule.sqrt_ac_T,
            self.schedule.sqrt_one_minus_ac_T,
        ]
        for layer in self._linears:  # the modules stay; their tensors may be swapped or updated
            tensors.append(layer.weight)
            tensors.append(layer.bias)
        return tuple((t.data_ptr(), t._version) for t in tensors)

    def reward_scorer(self) -> RewardScorer:
        """The precomputed scoring path for the current weights, rebuilt (K*T rows, cheap)
        whenever the weights changed since it was built: never stale."""
        key = self._weights_key()
        cached = self._scorer_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        scorer = RewardScorer(self.denoiser, self.schedule, self.reward_noise_KTD)
        self._scorer_cache = (key, scorer)
        return scorer

    def reward_log_one_minus_d(self, x_BD: Tensor) -> Tensor:
        with torch.no_grad():
            scorer = self.reward_scorer()  # its constants are built in float32
            with _autocast(self.compute_dtype, x_BD):
                return scorer.log_one_minus_d(self._clip(x_BD))

    def reward_d(self, x_BD: Tensor) -> Tensor:
        with torch.no_grad():
            scorer = self.reward_scorer()
            with _autocast(self.compute_dtype, x_BD):
                return scorer.d(self._clip(x_BD))

    def sample(self, n_samples: int, generator: torch.Generator, max_action: float) -> Tensor:
        """Pseudo-expert candidates from the reverse chain; only action dims are clamped."""
        with _autocast(self.compute_dtype, self.schedule.betas_T):
            return sample(
                self.denoiser,
                self.schedule,
                n_samples,
                generator,
                clamp_dims=self.action_dims,
                clamp_value=max_action,
            )


class MLPDiscriminator(nn.Module):
    """GAIL / DAC baseline: D = sigmoid(f(x)) with a 2-layer tanh MLP."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        generator: torch.Generator,
        input_clip: float = 1e4,
        compute_dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.input_clip = input_clip
        self.compute_dtype = check_compute_dtype(compute_dtype)
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.Tanh(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.Tanh(),
            nn.Linear(hidden_dim, 1),
        )
        reset_parameters(self.net, generator)

    def _logit(self, x_BD: Tensor) -> Tensor:
        with _autocast(self.compute_dtype, x_BD):
            logit = self.net(x_BD.clamp(-self.input_clip, self.input_clip)).squeeze(-1)
        return torch.nan_to_num(logit.float(), nan=0.0)

    def train_log_probs(self, x_BD: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        logit_B = self._logit(x_BD)
        return F.logsigmoid(logit_B), F.logsigmoid(-logit_B)

    def reward_log_one_minus_d(self, x_BD: Tensor) -> Tensor:
        with torch.no_grad():
            return F.logsigmoid(-self._logit(x_BD))

    def reward_d(self, x_BD: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.sigmoid(self._logit(x_BD))


def build_discriminator(
    input_dim: int,
    disc_config: DiscriminatorConfig,
    diffusion_config: DiffusionConfig,
    generator: torch.Generator,
    *,
    action_dims: slice | None,
) -> DiffusionDiscriminator | MLPDiscriminator:
    """The discriminator `disc_config.kind` names, initialised from `generator` (a CPU
    generator: modules are built on the CPU and moved to their device afterwards)."""
    if disc_config.kind == "diffusion":
        return DiffusionDiscriminator(
            input_dim,
            diffusion_config,
            generator,
            action_dims=action_dims,
            input_clip=disc_config.input_clip,
            compute_dtype=disc_config.compute_dtype,
        )
    if disc_config.kind == "mlp":
        return MLPDiscriminator(
            input_dim,
            disc_config.mlp_hidden_dim,
            generator,
            input_clip=disc_config.input_clip,
            compute_dtype=disc_config.compute_dtype,
        )
    raise ValueError(f"unknown discriminator kind {disc_config.kind!r}")


def reward_from_log_one_minus_d(log_one_minus_d_B: Tensor, reward_scale: float) -> Tensor:
    """r = reward_scale * -log(1 - D), from log(1 - D): finite whenever the log is."""
    return -reward_scale * log_one_minus_d_B


@dataclass(frozen=True)
class LossOutput:
    """One discriminator objective evaluation; the D values feed PEDR priorities."""

    loss: Tensor
    expert_term: float
    agent_term: float
    pseudo_term: float
    grad_penalty: float
    d_train_expert_B: Tensor
    d_train_agent_B: Tensor
    d_train_pseudo_B: Tensor | None


def gradient_penalty(
    disc: Discriminator,
    x_expert_BD: Tensor,
    x_agent_BD: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """mean((||grad_x D_train(x_hat)|| - 1)^2) on expert/agent interpolations (reference GP)."""
    rows = min(x_expert_BD.shape[0], x_agent_BD.shape[0])
    u_B1 = torch.rand((rows, 1), generator=generator, device=x_expert_BD.device)
    x_hat = (u_B1 * x_expert_BD[:rows] + (1 - u_B1) * x_agent_BD[:rows]).detach()
    x_hat.requires_grad_(True)
    log_d_B, _ = disc.train_log_probs(x_hat, generator)
    (grad_BD,) = torch.autograd.grad(log_d_B.exp().sum(), x_hat, create_graph=True)
    return (grad_BD.norm(dim=-1) - 1.0).pow(2).mean()


def bce_loss(
    disc: Discriminator,
    *,
    x_expert_BD: Tensor,
    w_expert_B: Tensor,
    x_agent_BD: Tensor,
    x_pseudo_BD: Tensor | None,
    w_pseudo_B: Tensor | None,
    config: DiscriminatorConfig,
    generator: torch.Generator,
) -> LossOutput:
    """SD2AIL objective: mean(w_E BCE(D_E, 1)) + mean(BCE(D_pi, 0)) + mean(w_F BCE(D_F, 1)) [+ GP].

    Each term is a mean over its own batch and clamped at `config.loss_clamp` per row, as
    torch.nn.BCELoss does; IS weights apply to the expert and pseudo terms only.
    """
    clamp = config.loss_clamp
    use_pseudo = x_pseudo_BD is not None and w_pseudo_B is not None and x_pseudo_BD.shape[0] > 0
    log_d_f: Tensor | None = None
    gp = torch.zeros((), device=x_expert_BD.device)
    # One autocast region for every forward (a no-op in float32): under bf16 the weights are
    # cast once per update, not once per forward. Noise is drawn in the same order either way.
    with _autocast(disc.compute_dtype, x_expert_BD):
        log_d_e, _ = disc.train_log_probs(x_expert_BD, generator)
        _, log_1md_a = disc.train_log_probs(x_agent_BD, generator)
        if use_pseudo:
            assert x_pseudo_BD is not None
            log_d_f, _ = disc.train_log_probs(x_pseudo_BD, generator)
        if config.grad_penalty > 0:
            gp = gradient_penalty(disc, x_expert_BD, x_agent_BD, generator)
    expert_term = (w_expert_B * (-log_d_e).clamp(max=clamp)).mean()
    agent_term = (-log_1md_a).clamp(max=clamp).mean()
    loss = expert_term + agent_term
    pseudo_term = torch.zeros((), device=loss.device)
    d_pseudo: Tensor | None = None
    if log_d_f is not None and w_pseudo_B is not None:
        pseudo_term = (w_pseudo_B * (-log_d_f).clamp(max=clamp)).mean()
        loss = loss + pseudo_term
        d_pseudo = log_d_f.detach().exp()
    if config.grad_penalty > 0:
        loss = loss + config.grad_penalty * gp
    return LossOutput(
        loss=loss,
        expert_term=float(expert_term.detach()),
        agent_term=float(agent_term.detach()),
        pseudo_term=float(pseudo_term.detach()),
        grad_penalty=float(gp.detach()),
        d_train_expert_B=log_d_e.detach().exp(),
        d_train_agent_B=(-torch.expm1(log_1md_a.detach())),
        d_train_pseudo_B=d_pseudo,
    )
