"""Discriminators: separation, stable reward numerics, the BCE objective and its IS weights."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sd2ail_reward import diffusion, discriminator
from sd2ail_reward.config import DiffusionConfig, DiscriminatorConfig
from sd2ail_reward.discriminator import (
    DiffusionDiscriminator,
    MLPDiscriminator,
    bce_loss,
    cpu_bf16_supported,
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


# ------------------------------------------------------------------------------------------
# Blocked forward-only paths (issue 15): the same values as one batch
# ------------------------------------------------------------------------------------------


def hopper_sized(compute_dtype: str = "float32", seed: int = 0) -> DiffusionDiscriminator:
    """Hopper's discriminator: 14 input dims (3 action + 11 obs), H = 256."""
    gen = torch.Generator().manual_seed(seed)
    return DiffusionDiscriminator(
        14, DiffusionConfig(), gen, action_dims=slice(0, 3), compute_dtype=compute_dtype
    )


def test_blocking_changes_no_value_of_rewards_or_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """D_reward, log(1 - D_reward) and the reverse chain are computed in cache-sized blocks of
    rows on the CPU; each row's result does not depend on the rows beside it in a matmul (for
    batches of 4 rows or more, which the balanced blocks guarantee), so the values are bitwise
    those of one batch, and the chain's noise is drawn as for one batch."""
    disc = hopper_sized()
    x = torch.randn((1111, 14), generator=torch.Generator().manual_seed(1)) * 2
    blocked = {}
    for block in (1 << 30, 100, 37):
        monkeypatch.setattr(diffusion, "CPU_BLOCK_ROWS", block)
        blocked[block] = (
            disc.reward_d(x),
            disc.reward_log_one_minus_d(x),
            disc.sample(1111, torch.Generator().manual_seed(2), max_action=1.0),
        )
    for block in (100, 37):
        for whole, part in zip(blocked[1 << 30], blocked[block], strict=True):
            assert torch.equal(whole, part), block


def test_row_blocks_are_balanced_and_cover_every_row() -> None:
    cpu = torch.device("cpu")
    for n_rows, per_item in ((0, 1), (3, 1), (2048, 1), (2049, 1), (12_800, 1), (4096, 10)):
        blocks = diffusion.row_blocks(n_rows, cpu, per_item)
        sizes = [b.stop - b.start for b in blocks]
        assert blocks[0].start == 0 and blocks[-1].stop == n_rows
        assert all(a.stop == b.start for a, b in itertools.pairwise(blocks))
        assert max(sizes) - min(sizes) <= 1
        assert max(sizes) * per_item <= max(diffusion.CPU_BLOCK_ROWS, per_item)
    assert diffusion.row_blocks(12_800, torch.device("meta")) == [slice(0, 12_800)]


# ------------------------------------------------------------------------------------------
# bf16 autocast (DiscriminatorConfig.compute_dtype): stated tolerances against float32
# ------------------------------------------------------------------------------------------

needs_bf16 = pytest.mark.skipif(not cpu_bf16_supported(), reason="CPU without native bf16")


Disc = DiffusionDiscriminator | MLPDiscriminator


def trained_pair(kind: str, seed: int) -> tuple[Disc, Disc]:
    """A float32 discriminator after 100 steps on two Gaussians, and its bf16 twin (same
    weights, compute_dtype="bfloat16")."""
    gen = torch.Generator().manual_seed(seed)
    disc: Disc
    disc = hopper_sized(seed=seed) if kind == "diffusion" else MLPDiscriminator(14, 256, gen)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    for _ in range(100):
        out = bce_loss(
            disc,
            x_expert_BD=torch.randn((128, 14), generator=gen) * 0.5 + 0.5,
            w_expert_B=torch.ones(128),
            x_agent_BD=torch.randn((128, 14), generator=gen) * 0.5 - 0.5,
            x_pseudo_BD=None,
            w_pseudo_B=None,
            config=DiscriminatorConfig(lr=1e-3),
            generator=gen,
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    twin = copy.deepcopy(disc)
    twin.compute_dtype = "bfloat16"
    return disc, twin


@needs_bf16
@pytest.mark.parametrize("kind", ["diffusion", "mlp"])
def test_bf16_rewards_stay_within_tolerance_of_float32(kind: str) -> None:
    """Rewards -2 log(1 - D) within 2e-2 relative + 2e-3 absolute of float32 for the diffusion
    discriminator (measured: <= 6e-3 relative, <= 1e-3 absolute) and within 6e-2 relative
    + 1e-2 absolute for the GAIL MLP, whose saturated logits (rewards ~22) carry bf16's
    relative error (measured: <= 3.7e-2); D itself within 3e-3 (measured: <= 6e-4)."""
    for seed in range(2):
        disc, twin = trained_pair(kind, seed)
        gen = torch.Generator().manual_seed(10 + seed)
        x = torch.cat([torch.randn((256, 14), generator=gen) * 0.5 + s for s in (0.5, -0.5)])
        r32 = reward_from_log_one_minus_d(disc.reward_log_one_minus_d(x), 2.0)
        r16 = reward_from_log_one_minus_d(twin.reward_log_one_minus_d(x), 2.0)
        assert r16.dtype == torch.float32 and torch.isfinite(r16).all()
        rtol, atol = (2e-2, 2e-3) if kind == "diffusion" else (6e-2, 1e-2)
        torch.testing.assert_close(r16, r32, rtol=rtol, atol=atol)
        torch.testing.assert_close(twin.reward_d(x), disc.reward_d(x), rtol=0, atol=3e-3)


@needs_bf16
@pytest.mark.parametrize("kind", ["diffusion", "mlp"])
def test_bf16_training_step_stays_within_tolerance_of_float32(kind: str) -> None:
    """One update (expert, agent and IS-weighted pseudo terms plus a gradient penalty, which
    differentiates through the network twice) on the same inputs and noise: the loss within
    1e-3 relative of float32's (measured <= 1e-4), the gradient within 2% in norm of the
    difference (measured <= 0.6%), the Adam step's parameter change at cosine >= 0.99 of
    float32's (measured >= 0.997), and D_train within 5e-3 (diffusion; measured <= 1e-3) or
    1e-2 (MLP, D = sigmoid(logit) near 0.5; measured <= 5.2e-3)."""
    disc, twin = trained_pair(kind, seed=0)
    gen = torch.Generator().manual_seed(20)
    x_e, x_a = torch.randn((256, 14), generator=gen), torch.randn((256, 14), generator=gen)
    x_f = torch.randn((512, 14), generator=gen)
    results = []
    for model in (disc, twin):
        opt = torch.optim.Adam(model.parameters(), lr=3e-5)
        out = bce_loss(
            model,
            x_expert_BD=x_e,
            w_expert_B=torch.ones(256),
            x_agent_BD=x_a,
            x_pseudo_BD=x_f,
            w_pseudo_B=torch.full((512,), 0.7),
            config=DiscriminatorConfig(grad_penalty=0.1),
            generator=torch.Generator().manual_seed(9),
        )
        opt.zero_grad()
        out.loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        opt.step()
        step = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
        results.append((out, grad, step))
    (o32, g32, s32), (o16, g16, s16) = results
    assert o16.loss.dtype == torch.float32
    assert o16.loss.item() == pytest.approx(o32.loss.item(), rel=1e-3)
    assert o16.grad_penalty == pytest.approx(o32.grad_penalty, rel=1e-2)
    assert ((g16 - g32).norm() / g32.norm()).item() < 2e-2
    assert F.cosine_similarity(s16, s32, dim=0).item() >= 0.99
    atol = 5e-3 if kind == "diffusion" else 1e-2
    torch.testing.assert_close(o16.d_train_expert_B, o32.d_train_expert_B, rtol=0, atol=atol)


@needs_bf16
def test_bf16_generation_clamps_actions_and_returns_float32() -> None:
    disc = hopper_sized("bfloat16")
    x = disc.sample(3000, torch.Generator().manual_seed(3), max_action=0.5)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert x[:, :3].abs().max() <= 0.5 and x[:, 3:].abs().max() > 0.5


def test_compute_dtype_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        hopper_sized("float16")
    monkeypatch.setattr(discriminator, "cpu_bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="native bf16"):
        hopper_sized("bfloat16")
    assert hopper_sized("float32").compute_dtype == "float32"  # float32 needs nothing
