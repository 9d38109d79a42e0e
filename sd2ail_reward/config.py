"""Frozen configuration dataclasses and the per-environment presets.

Every default is the paper's (positron-lpc/SD2AIL, ML-Group-SDU/DiffAIL; see
`shared/reference/ALGORITHM.md`), except where a field's docstring says otherwise and why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

Algo = Literal["sd2ail", "diffail", "pedr_only", "pseudo_only", "gail"]
ALGOS: tuple[Algo, ...] = ("sd2ail", "diffail", "pedr_only", "pseudo_only", "gail")


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """DDPM used as the discriminator (and as the pseudo-expert generator)."""

    n_timesteps: int = 10
    """T: diffusion steps. The paper's ablation found T = 10 or 20 best."""
    beta_start: float = 1e-4
    """First beta of the linear schedule."""
    beta_end: float = 2e-2
    """Last beta of the linear schedule."""
    hidden_dim: int = 256
    """H of the 3 x H Mish eps-network (256 Hopper, 128 HalfCheetah / Walker / Ant)."""
    time_embed_dim: int = 16
    """Width of the sinusoidal time embedding (then 16 -> 32 -> 16 MLP)."""
    reward_noise_samples: int = 1
    """K noise draws per timestep for D_reward. The noise is a fixed table drawn once at
    initialisation, so the reward is a deterministic function of (s, a): served and in-process
    rewards agree, batching cannot change a caller's reward, and a resumed server reproduces it."""


@dataclass(frozen=True, kw_only=True)
class DiscriminatorConfig:
    """Discriminator optimisation and the reward derived from it."""

    kind: Literal["diffusion", "mlp"] = "diffusion"
    """diffusion = DiffAIL/SD2AIL; mlp = the GAIL/DAC logistic discriminator baseline."""
    lr: float = 3e-5
    """Adam learning rate (the YAML variables override the 3e-4 constant)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas (disc_momentum = 0.9)."""
    grad_penalty: float = 0.0
    """Gradient-penalty weight; 0 turns it off (Hopper off, HalfCheetah 0.1, Walker 0.001)."""
    reward_scale: float = 2.0
    """Multiplies -log(1 - D); the reference applies SAC's reward_scale = 2.0."""
    mlp_hidden_dim: int = 256
    """Hidden width of the 2-layer MLP discriminator (kind = mlp only)."""
    expert_batch: int = 256
    """Expert rows per update, split evenly over the per-trajectory buffers."""
    agent_batch: int = 256
    """Agent (policy) rows per update."""
    pseudo_ratio: int = 7
    """Pseudo-expert rows per update = pseudo_ratio x expert_batch (7:1, i.e. 1792)."""
    loss_clamp: float = 100.0
    """Each BCE term is clamped here, as torch.nn.BCELoss clamps log at -100."""
    input_clip: float = 1e4
    """Normalised inputs are clipped to +-input_clip so a reward is finite for any finite input."""
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    """bfloat16 runs the discriminator's forward passes on the CPU (training step, rewards,
    pseudo-expert generation) under torch.autocast: matmuls in bf16, the losses, eps errors and
    rewards in float32. Not the paper's arithmetic, so off by default: on a CPU with native bf16
    (AVX512-BF16 / AMX; refused on others, where it would only be emulated) a Hopper SD2AIL
    update costs ~1.9x less, for rewards within 2e-2 relative of float32's (tests state the
    tolerances; benchmarks/README.md the timings). CUDA tensors ignore it."""


@dataclass(frozen=True, kw_only=True)
class PEDRConfig:
    """Prioritized expert demonstration replay (sum-tree PER, Schaul et al.)."""

    prioritized: bool = True
    """False = uniform sampling (alpha = 0, no priority updates), DiffAIL's replay."""
    alpha: float = 0.8
    """Priority exponent (Hopper / Walker / HalfCheetah 0.8, Ant 0.6)."""
    beta0: float = 0.6
    """Initial IS exponent (Hopper 0.6, others 0.4), annealed to 1."""
    beta_increment: float = 1e-3
    """Added to beta at every sample call, capped at 1."""
    priority_eps: float = 0.01
    """p = min(|1 - D_train| + eps, 1) ** alpha."""
    expert_capacity: int = 1000
    """Capacity of each per-trajectory expert buffer (one episode of 1000 steps)."""
    pseudo_capacity: int = 100_000
    """Capacity of the FIFO pseudo-expert buffer."""


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """Pseudo-expert generation with the dynamic threshold."""

    enabled: bool = True
    """False for diffail / pedr_only / gail."""
    candidates_per_update: int = 256
    """Candidates per discriminator update on average (the reference: 256 per SAC step)."""
    refresh_every: int = 50
    """Generate candidates_per_update x refresh_every in one batched reverse chain every
    refresh_every updates: the same number of candidates as the reference, in one call instead
    of refresh_every small ones."""
    max_action: float = 1.0
    """Action dims (in [-1, 1] scaled space) are clamped to +-max_action; observation dims never."""


@dataclass(frozen=True, kw_only=True)
class LearnerConfig:
    """Everything RewardLearner needs; `preset()` fills it per environment and algorithm."""

    algo: Algo = "sd2ail"
    """Which method of the paper's comparison this configuration is."""
    env_id: str = ""
    """Environment the demos come from (checked against every demo store)."""
    state_only: bool = False
    """Discriminate [obs, next_obs] instead of [action, obs] (learning from observation)."""
    normalize_obs: bool = True
    """Normalise obs with the expert mean / std (Hopper, Walker on; HalfCheetah, Ant off)."""
    agent_capacity: int = 1_000_000
    """Capacity of the FIFO buffer of pushed agent transitions."""
    min_agent_size: int = 256
    """Training waits until the agent buffer holds at least this many rows."""
    disc_updates_per_transition: float = 1.0
    """Discriminator updates per pushed transition (the paper: one per SAC step)."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    pedr: PEDRConfig = field(default_factory=PEDRConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


PRESETS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
    "halfcheetah": "HalfCheetah-v5",
    "ant": "Ant-v5",
    "pendulum": "Pendulum-v1",
}


def preset_for_env(env_id: str) -> str:
    """Name of the preset whose environment family matches `env_id` (e.g. Hopper-v4 -> hopper)."""
    family = env_id.split("-")[0].lower()
    if family in PRESETS:
        return family
    raise ValueError(f"no preset for env {env_id!r}; known presets: {sorted(PRESETS)}")


def _algo_switches(algo: Algo) -> tuple[str, bool, bool]:
    """(discriminator kind, prioritized replay, pseudo-experts) of each algorithm."""
    switches: dict[str, tuple[str, bool, bool]] = {
        "sd2ail": ("diffusion", True, True),
        "diffail": ("diffusion", False, False),
        "pedr_only": ("diffusion", True, False),
        "pseudo_only": ("diffusion", False, True),
        "gail": ("mlp", False, False),
    }
    if algo not in switches:
        raise ValueError(f"unknown algo {algo!r}; expected one of {list(switches)}")
    return switches[algo]


def preset(name: str, algo: Algo = "sd2ail") -> LearnerConfig:
    """The paper's configuration for one environment family and one algorithm.

    Pendulum is not in the paper: it is the fast CI task, with a smaller network, a 10x higher
    discriminator learning rate (3e-4, the DiffAIL code's constant) and 200-step trajectories.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    kind, prioritized, pseudo = _algo_switches(algo)
    per_env: dict[str, dict[str, float | bool | int]] = {
        "hopper": dict(hidden=256, gp=0.0, norm=True, alpha=0.8, beta0=0.6, lr=3e-5, cap=1000),
        "walker2d": dict(hidden=128, gp=0.001, norm=True, alpha=0.8, beta0=0.4, lr=3e-5, cap=1000),
        "halfcheetah": dict(
            hidden=128, gp=0.1, norm=False, alpha=0.8, beta0=0.4, lr=3e-5, cap=1000
        ),
        "ant": dict(hidden=128, gp=0.1, norm=False, alpha=0.6, beta0=0.4, lr=3e-5, cap=1000),
        "pendulum": dict(hidden=128, gp=0.0, norm=True, alpha=0.8, beta0=0.6, lr=3e-4, cap=200),
    }
    p = per_env[name]
    return LearnerConfig(
        algo=algo,
        env_id=PRESETS[name],
        state_only=False,
        normalize_obs=bool(p["norm"]),
        diffusion=DiffusionConfig(hidden_dim=int(p["hidden"])),
        discriminator=DiscriminatorConfig(
            kind=kind,  # type: ignore[arg-type]
            lr=float(p["lr"]),
            grad_penalty=float(p["gp"]),
        ),
        pedr=PEDRConfig(
            prioritized=prioritized,
            alpha=float(p["alpha"]),
            beta0=float(p["beta0"]),
            expert_capacity=int(p["cap"]),
        ),
        synthetic=SyntheticConfig(enabled=pseudo),
    )


def replace(config: LearnerConfig, **changes: object) -> LearnerConfig:
    """`dataclasses.replace`, re-exported so callers need not import dataclasses."""
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def to_dict(config: LearnerConfig) -> dict[str, object]:
    """JSON-ready dict of a config (tuples become lists)."""
    return dataclasses.asdict(config)


def from_dict(data: dict[str, object]) -> LearnerConfig:
    """Inverse of `to_dict`; unknown keys raise so a stale checkpoint is noticed."""
    nested = {
        "diffusion": DiffusionConfig,
        "discriminator": DiscriminatorConfig,
        "pedr": PEDRConfig,
        "synthetic": SyntheticConfig,
    }
    kwargs: dict[str, object] = {}
    for key, value in data.items():
        if key in nested and isinstance(value, dict):
            sub = dict(value)
            if "adam_betas" in sub and isinstance(sub["adam_betas"], list):
                sub["adam_betas"] = tuple(sub["adam_betas"])
            kwargs[key] = nested[key](**sub)
        else:
            kwargs[key] = value
    return LearnerConfig(**kwargs)  # type: ignore[arg-type]
