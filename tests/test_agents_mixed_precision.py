"""`train --sac-dtype bfloat16`: SAC's trunks compute in bf16 inside the update only, the heads
stay float32, and one update lands where float32's does within a stated tolerance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from tianshou.data import Batch, ReplayBuffer
from tianshou.utils.torch_utils import policy_within_training_step

from agents.mixed_precision import bf16_trunks, sac_trunks
from agents.networks import box_spaces
from agents.recipes import TrainArgs
from agents.sac import make_sac

OBS_DIM, ACT_DIM = 11, 3  # Hopper-v5


def hopper_sac(seed: int = 0) -> Any:
    torch.manual_seed(seed)  # Tianshou's default init draws from the global generator
    return make_sac(TrainArgs(env="Hopper-v5"), *box_spaces("Hopper-v5"), None)


def random_buffer(n: int = 2_000, seed: int = 0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(n)
    for i in range(n):
        buffer.add(
            Batch(
                obs=rng.standard_normal(OBS_DIM).astype(np.float32),
                act=rng.uniform(-1, 1, ACT_DIM).astype(np.float32),
                rew=float(rng.uniform(0, 3)),
                terminated=False,
                truncated=i % 500 == 499,
                obs_next=rng.standard_normal(OBS_DIM).astype(np.float32),
                info={},
            )
        )
    return buffer


def q_values(algorithm: Any, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    obs = torch.as_tensor(rng.standard_normal((64, OBS_DIM)), dtype=torch.float32)
    act = torch.as_tensor(rng.uniform(-1, 1, (64, ACT_DIM)), dtype=torch.float32)
    with torch.no_grad():
        return algorithm.critic(obs, act)


def test_trunks_are_every_actor_and_critic_including_the_lagged_critics() -> None:
    algorithm = hopper_sac()
    trunks = sac_trunks(algorithm)
    # actor, critic, critic2 and the two lagged critics of the TD target
    assert len(trunks) == 5
    assert algorithm.critic.preprocess in trunks and algorithm.policy.actor.preprocess in trunks


def test_inside_the_trunks_run_bf16_and_the_heads_float32_outside_nothing_changes() -> None:
    algorithm = hopper_sac()
    first_linear = next(
        m for m in algorithm.critic.preprocess.modules() if isinstance(m, torch.nn.Linear)
    )
    seen: list[torch.dtype] = []
    first_linear.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    before = q_values(algorithm)
    with bf16_trunks(algorithm):
        inside = q_values(algorithm)
    after = q_values(algorithm)
    assert seen == [torch.float32, torch.bfloat16, torch.float32]
    assert inside.dtype == torch.float32  # the head's output, hence the TD target, stays fp32
    assert torch.equal(before, after)  # the hooks are gone: bitwise the float32 network
    assert not torch.equal(before, inside)
    assert torch.allclose(inside, before, rtol=2e-2, atol=2e-2)
    assert all(not t._forward_hooks and not t._forward_pre_hooks for t in sac_trunks(algorithm))
    with bf16_trunks(algorithm, enabled=False):
        assert torch.equal(q_values(algorithm), before)


def updated(dtype: str, n_updates: int = 3) -> tuple[Any, list[Any]]:
    algorithm, buffer = hopper_sac(), random_buffer()
    np.random.seed(0)  # Tianshou's buffer samples from numpy's global generator
    stats = []
    with (
        policy_within_training_step(algorithm.policy),
        bf16_trunks(algorithm, enabled=dtype == "bfloat16"),
    ):
        for _ in range(n_updates):
            stats.append(algorithm.update(buffer=buffer, sample_size=256))
    return algorithm, stats


def test_bf16_updates_stay_within_tolerance_of_float32() -> None:
    """Three updates from the same weights on the same batches: critic and actor losses within
    2e-3 relative (measured <= 1e-4), Q after the updates within 5e-3 of float32's (measured
    5e-4), and every parameter moved the same way: cosine of the weight changes >= 0.95
    (measured >= 0.985; Adam's first steps are ~lr x sign(gradient), so near-zero gradient
    entries may flip)."""
    fp32, fp32_stats = updated("float32")
    bf16, bf16_stats = updated("bfloat16")
    for a, b in zip(fp32_stats, bf16_stats, strict=True):
        assert b.critic1_loss == pytest.approx(a.critic1_loss, rel=2e-3)
        assert b.critic2_loss == pytest.approx(a.critic2_loss, rel=2e-3)
        assert b.actor_loss == pytest.approx(a.actor_loss, rel=2e-3, abs=1e-4)
    assert torch.allclose(q_values(bf16), q_values(fp32), rtol=5e-3, atol=1e-3)
    start = dict(hopper_sac().named_parameters())
    fp32_params, bf16_params = dict(fp32.named_parameters()), dict(bf16.named_parameters())
    for name, initial in start.items():
        if "log_alpha" in name or "_old" in name:
            continue
        delta_fp32 = (fp32_params[name] - initial).detach().flatten()
        delta_bf16 = (bf16_params[name] - initial).detach().flatten()
        cosine = torch.nn.functional.cosine_similarity(delta_fp32, delta_bf16, dim=0)
        assert cosine >= 0.95, (name, float(cosine))


def test_train_refuses_bf16_sac_without_native_bf16(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import agents.recipes as recipes

    monkeypatch.setattr(recipes, "cpu_bf16_supported", lambda: False)
    assert recipes.parse_train_args([]).sac_dtype == "float32"
    with pytest.raises(SystemExit) as exit_info:
        recipes.parse_train_args(["--sac-dtype", "bfloat16"])
    assert exit_info.value.code == 2
    assert "needs a CPU with native bf16" in capsys.readouterr().err
    monkeypatch.setattr(recipes, "cpu_bf16_supported", lambda: True)
    assert recipes.parse_train_args(["--sac-dtype", "bfloat16"]).sac_dtype == "bfloat16"
