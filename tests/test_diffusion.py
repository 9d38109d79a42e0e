"""DDPM core: schedule values, batched losses, and a sampler that reproduces a 2-D mixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd2ail_reward.diffusion import (
    Denoiser,
    NoiseSchedule,
    eps_mse_one_step,
    eps_sq_err_all_steps,
    reset_parameters,
    sample,
)


def frechet_distance(a_ND: np.ndarray, b_ND: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sample sets (2-D closed form)."""
    a, b = a_ND.astype(np.float64), b_ND.astype(np.float64)
    cov_a, cov_b = np.cov(a.T), np.cov(b.T)
    # trace(sqrtm(A B)) from the eigenvalues of A B (real, non-negative for SPD A, B)
    eig = np.linalg.eigvals(cov_a @ cov_b)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b) - 2 * tr_sqrt)


def mixture(n: int, gen: torch.Generator) -> torch.Tensor:
    """Four Gaussians at the scale of normalised state-action data."""
    centers = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]) * 0.5
    idx = torch.randint(0, 4, (n,), generator=gen)
    return centers[idx] + 0.1 * torch.randn((n, 2), generator=gen)


def test_linear_schedule_matches_reference_values() -> None:
    sched = NoiseSchedule(10, 1e-4, 2e-2)
    expected = np.linspace(1e-4, 2e-2, 10)
    np.testing.assert_allclose(sched.betas_T.numpy(), expected, rtol=1e-6)
    # ALGORITHM.md: with T = 10, alpha_bar_T ~ 0.9037
    assert float(sched.alphas_cumprod_T[-1]) == pytest.approx(0.9037, abs=1e-3)


def test_all_steps_error_is_one_batched_forward() -> None:
    gen = torch.Generator().manual_seed(0)
    sched, net = NoiseSchedule(10, 1e-4, 2e-2), Denoiser(3, 32, 16)
    calls: list[int] = []
    net.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    noise = torch.randn((2, 10, 3), generator=gen)
    err = eps_sq_err_all_steps(net, sched, torch.zeros((5, 3)), noise)
    assert err.shape == (5, 20, 3)
    assert calls == [5 * 2 * 10]
    # row i's errors do not depend on the other rows of the batch
    x = torch.randn((6, 3), generator=gen)
    full = eps_sq_err_all_steps(net, sched, x, noise)
    single = eps_sq_err_all_steps(net, sched, x[4:5], noise)
    torch.testing.assert_close(full[4:5], single, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_training_lowers_loss_and_samples_match_the_mixture() -> None:
    gen = torch.Generator().manual_seed(0)
    sched, net = NoiseSchedule(10, 1e-4, 2e-2), Denoiser(2, 128, 16)
    reset_parameters(net, gen)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(1500):
        loss = eps_mse_one_step(net, sched, mixture(256, gen), gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # at small t the eps of a 0.01-scale perturbation is barely predictable: the loss floor is high
    assert np.mean(losses[-100:]) < 0.75 * np.mean(losses[:100])
    data = mixture(4000, gen).numpy()
    samples = sample(net, sched, 4000, gen).numpy()
    noise = torch.randn((4000, 2), generator=gen).numpy()
    fd_samples, fd_noise = frechet_distance(samples, data), frechet_distance(noise, data)
    assert fd_samples * 10 < fd_noise, (fd_samples, fd_noise)


def test_sampler_clamps_only_the_given_dims() -> None:
    gen = torch.Generator().manual_seed(1)
    sched, net = NoiseSchedule(10, 1e-4, 2e-2), Denoiser(4, 16, 16)
    with torch.no_grad():
        net.body[-1].bias.fill_(-50.0)  # predicted eps pushes every dim far out
    out = sample(net, sched, 64, gen, clamp_dims=slice(0, 2), clamp_value=1.0)
    assert out[:, :2].abs().max() <= 1.0
    assert out[:, 2:].abs().max() > 1.0


def test_reset_parameters_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = Denoiser(3, 8, 16), Denoiser(3, 8, 16)
    reset_parameters(a, torch.Generator().manual_seed(7))
    reset_parameters(b, torch.Generator().manual_seed(7))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    # construction itself draws from the global RNG; reset_parameters must not
    torch.random.set_rng_state(state)
    reset_parameters(a, torch.Generator().manual_seed(8))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_library_frechet_distance_matches_the_closed_form() -> None:
    from sd2ail_reward.metrics import frechet_distance as lib_fd

    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 2)) @ np.array([[1.0, 0.3], [0.0, 0.5]])
    b = rng.normal(size=(2000, 2)) * 2 + 1
    assert lib_fd(a, b) == pytest.approx(frechet_distance(a, b), rel=1e-6)
    assert lib_fd(a, a) == pytest.approx(0.0, abs=1e-9)
