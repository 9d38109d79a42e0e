"""Discriminators: separation, stable reward numerics, the BCE objective and its IS weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sd2ail_reward.config import DiffusionConfig, DiscriminatorConfig
from sd2ail_reward.discriminator import (
    DiffusionDiscriminator,
    MLPDiscriminator,
    bce_loss,
    gradient_penalty,
    reward_from_log_one_minus_d,
)

DIM = 4


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def make(kind: str, seed: int = 0) -> DiffusionDiscriminator | MLPDiscriminator:
    gen = torch.Generator().manual_seed(seed)
    if kind == "diffusion":
        return DiffusionDiscriminator(DIM, DiffusionConfig(hidden_dim=64), gen)
    return MLPDiscriminator(DIM, 64, gen)


def d_reward(disc: DiffusionDiscriminator | MLPDiscriminator, x: torch.Tensor) -> np.ndarray:
    return disc.reward_d(x).numpy()


@pytest.mark.parametrize("kind", ["diffusion", "mlp"])
def test_trained_discriminator_ranks_expert_above_agent(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    disc = make(kind)
    config = DiscriminatorConfig(lr=1e-3)
    opt = torch.optim.Adam(disc.parameters(), lr=config.lr)

    def expert(n: int) -> torch.Tensor:
        return torch.randn((n, DIM), generator=gen) * 0.5 + 0.5

    def agent(n: int) -> torch.Tensor:
        return torch.randn((n, DIM), generator=gen) * 0.5 - 0.5

    for _ in range(600):
        out = bce_loss(
            disc,
            x_expert_BD=expert(128),
            w_expert_B=torch.ones(128),
            x_agent_BD=agent(128),
            x_pseudo_BD=None,
            w_pseudo_B=None,
            config=config,
            generator=gen,
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    d_expert, d_agent = d_reward(disc, expert(500)), d_reward(disc, agent(500))
    assert auc(d_expert, d_agent) > 0.95
    assert ((d_expert > 0) & (d_expert < 1)).all() and ((d_agent > 0) & (d_agent < 1)).all()


@pytest.mark.parametrize("kind", ["diffusion", "mlp"])
@pytest.mark.parametrize("magnitude", [1.0, 1e3, 1e6, 1e30])
def test_reward_is_finite_for_any_finite_input(kind: str, magnitude: float) -> None:
    disc = make(kind)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((64, DIM), generator=gen) * magnitude
    x[0] = magnitude
    x[1] = -magnitude
    log_1md = disc.reward_log_one_minus_d(x)
    reward = reward_from_log_one_minus_d(log_1md, 2.0)
    assert torch.isfinite(reward).all()
    assert (reward >= 0).all()
    d = d_reward(disc, x)
    assert ((d >= 0) & (d <= 1)).all()


def test_reward_equals_minus_log_one_minus_d_where_well_conditioned() -> None:
    disc = make("diffusion")
    x = torch.randn((32, DIM), generator=torch.Generator().manual_seed(2))
    d = torch.from_numpy(d_reward(disc, x)).double()
    reward = reward_from_log_one_minus_d(disc.reward_log_one_minus_d(x), 2.0).double()
    torch.testing.assert_close(reward, -2.0 * torch.log1p(-d), rtol=1e-5, atol=1e-6)


def test_diffusion_reward_is_deterministic_and_row_independent() -> None:
    disc = make("diffusion")
    x = torch.randn((50, DIM), generator=torch.Generator().manual_seed(3))
    full = disc.reward_log_one_minus_d(x)
    assert torch.equal(full, disc.reward_log_one_minus_d(x))
    part = disc.reward_log_one_minus_d(x[10:13])
    torch.testing.assert_close(full[10:13], part, rtol=1e-5, atol=1e-6)


def test_d_reward_is_mean_of_exp_over_all_steps() -> None:
    """D_reward = mean_{t, j} exp(-(eps_hat - eps)^2), not exp of the mean (ALGORITHM.md sec 1)."""
    disc = make("diffusion")
    x = torch.randn((4, DIM), generator=torch.Generator().manual_seed(4))
    sched, net, noise = disc.schedule, disc.denoiser, disc.reward_noise_KTD[0]
    per_t = []
    with torch.no_grad():
        for t in range(sched.n_timesteps):
            t_B = torch.full((4,), t, dtype=torch.long)
            eps = noise[t].expand(4, DIM)
            err = net(sched.q_sample(x, t_B, eps), t_B) - eps
            per_t.append(torch.exp(-err.pow(2)))
    expected = torch.stack(per_t, dim=1).mean(dim=(1, 2))
    torch.testing.assert_close(torch.from_numpy(d_reward(disc, x)), expected, rtol=1e-5, atol=1e-6)


def test_bce_terms_and_importance_weights() -> None:
    disc = make("diffusion")
    x_e = torch.randn((16, DIM), generator=torch.Generator().manual_seed(5))
    x_a = torch.randn((16, DIM), generator=torch.Generator().manual_seed(6))
    x_f = torch.randn((32, DIM), generator=torch.Generator().manual_seed(7))
    config = DiscriminatorConfig()

    def loss(w_e: torch.Tensor, w_f: torch.Tensor) -> tuple[float, float, float]:
        out = bce_loss(
            disc,
            x_expert_BD=x_e,
            w_expert_B=w_e,
            x_agent_BD=x_a,
            x_pseudo_BD=x_f,
            w_pseudo_B=w_f,
            config=config,
            generator=torch.Generator().manual_seed(0),
        )
        assert out.loss.item() == pytest.approx(out.expert_term + out.agent_term + out.pseudo_term)
        return out.expert_term, out.agent_term, out.pseudo_term

    e1, a1, f1 = loss(torch.ones(16), torch.ones(32))
    e0, a0, f0 = loss(torch.zeros(16), torch.zeros(32))
    assert e1 > 0 and f1 > 0 and a1 > 0
    assert e0 == 0 and f0 == 0
    assert a0 == pytest.approx(a1)  # the agent term carries no IS weight
    e_half, _, f_half = loss(torch.full((16,), 0.5), torch.full((32,), 0.5))
    assert e_half == pytest.approx(0.5 * e1) and f_half == pytest.approx(0.5 * f1)


def test_gradient_penalty_is_finite_and_enters_the_loss() -> None:
    disc = make("diffusion")
    gen = torch.Generator().manual_seed(8)
    x_e, x_a = torch.randn((16, DIM), generator=gen), torch.randn((16, DIM), generator=gen)
    gp = gradient_penalty(disc, x_e, x_a, gen)
    assert torch.isfinite(gp) and gp.item() >= 0
    gp.backward()  # differentiable w.r.t. the weights (create_graph=True)
    out = bce_loss(
        disc,
        x_expert_BD=x_e,
        w_expert_B=torch.ones(16),
        x_agent_BD=x_a,
        x_pseudo_BD=None,
        w_pseudo_B=None,
        config=DiscriminatorConfig(grad_penalty=10.0),
        generator=gen,
    )
    assert out.grad_penalty > 0
    assert out.loss.item() == pytest.approx(
        out.expert_term + out.agent_term + 10.0 * out.grad_penalty, rel=1e-5
    )


def _reference_rewards(disc: DiffusionDiscriminator, x: torch.Tensor) -> tuple[np.ndarray, ...]:
    """D_reward and log(1 - D_reward) straight from `eps_sq_err_all_steps` (the definition)."""
    with torch.no_grad():
        sq_err = disc._reward_sq_err(x)
        d_ref = torch.exp(-sq_err).mean(dim=(1, 2))
        log_1md_ref = torch.log((-torch.expm1(-sq_err)).mean(dim=(1, 2)).clamp_min(1e-30))
    return d_ref.numpy(), log_1md_ref.numpy()


def _reference_float64(
    disc: DiffusionDiscriminator, x: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """The reference D_reward and log(1 - D) evaluated in float64 (same weights and noise)."""
    wide = copy.deepcopy(disc).double()
    noise_KTD = wide.reward_noise_KTD
    n_draws, n_steps, dim = noise_KTD.shape
    t_R = torch.arange(n_steps).repeat(n_draws)
    eps_RD = noise_KTD.reshape(-1, dim)
    sched, net = wide.schedule, wide.denoiser
    with torch.no_grad():
        x0 = x.double().clamp(-disc.input_clip, disc.input_clip)
        x_t = (
            sched.sqrt_ac_T[t_R, None] * x0[:, None, :]
            + sched.sqrt_one_minus_ac_T[t_R, None] * eps_RD
        )
        temb = net.time_mlp[1:](net.time_mlp[0](t_R).double())
        inp = torch.cat([x_t, temb.expand(x0.shape[0], -1, -1)], dim=-1)
        sq_err = (net.body(inp) - eps_RD).pow(2)
        sq_err = torch.nan_to_num(sq_err, nan=float("inf"), posinf=float("inf"))
        d_B = torch.exp(-sq_err).mean(dim=(1, 2))
        log_1md_B = torch.log((-torch.expm1(-sq_err)).mean(dim=(1, 2)).clamp_min(1e-30))
        return d_B.numpy(), log_1md_B.numpy()


@pytest.mark.parametrize("magnitude", [0.1, 1.0, 3.0, 1e3, 1e6, 1e30])
def test_precomputed_reward_path_equals_the_reference_formula(magnitude: float) -> None:
    """The cached fast path (constant time embeddings, noise terms and first-layer time part)
    gives the reference D and log(1 - D) to 1e-5 relative at moderate inputs, before and
    after the weights change in place (the cache must never serve stale constants).

    Large inputs: with |x| clipped at 1e4 the float32 rounding of the first Linear is ~1e-3
    absolute for either summation order, and exp(-err^2) amplifies it (err^2 ~ 40 -> ~3e-5
    relative in D, and in log(1 - D) ~ -D), so there both are checked against a float64
    evaluation of the formula: the fast path must be as close to it as the float32 reference."""
    disc = make("diffusion")
    assert isinstance(disc, DiffusionDiscriminator)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((96, DIM), generator=gen) * magnitude
    x[0] = float("nan")
    x[1] = magnitude
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    previous: np.ndarray | None = None
    for _ in range(3):
        d_ref, log_1md_ref = _reference_rewards(disc, x)
        with torch.inference_mode():
            d_fast = disc.reward_d(x).numpy()
            log_1md_fast = disc.reward_log_one_minus_d(x).numpy()
        assert np.isfinite(log_1md_fast).all()
        if magnitude <= 3.0:
            np.testing.assert_allclose(d_fast, d_ref, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(log_1md_fast, log_1md_ref, rtol=1e-5, atol=1e-7)
        else:
            wide = _reference_float64(disc, x)
            for fast, ref, exact in zip(
                (d_fast, log_1md_fast), (d_ref, log_1md_ref), wide, strict=True
            ):
                scale = np.maximum(np.abs(exact), 1e-30)
                err_fast = np.abs(fast - exact) / scale
                err_ref = np.abs(ref - exact) / scale
                assert err_fast.max() <= 4 * err_ref.max() + 1e-5, (err_fast.max(), err_ref.max())
        if previous is not None:  # the weights changed: so did the rewards (no stale cache)
            assert not np.array_equal(d_fast, previous)
        previous = d_fast
        loss = torch.stack([(p * p).sum() for p in disc.parameters()]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
