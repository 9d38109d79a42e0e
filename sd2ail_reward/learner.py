"""RewardLearner: the SD2AIL engine the server wraps.

It owns the discriminator, the expert / pseudo-expert replays, the pseudo-expert generator, the
agent buffer and the input normaliser. No sockets, no files, no threads: the caller decides when
to push, train, score and checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sd2ail_reward.agent_buffer import AgentBuffer
from sd2ail_reward.batches import check_transitions
from sd2ail_reward.config import LearnerConfig, from_dict, to_dict
from sd2ail_reward.demoset import DemoSet
from sd2ail_reward.discriminator import (
    DiffusionDiscriminator,
    MLPDiscriminator,
    bce_loss,
    build_discriminator,
    reward_from_log_one_minus_d,
)
from sd2ail_reward.expert_replay import ExpertReplay
from sd2ail_reward.metrics import frechet_distance
from sd2ail_reward.normalize import InputNormalizer
from sd2ail_reward.synthetic import d_reward, dynamic_threshold, generate_pseudo_experts

STATE_FORMAT = 1
_REWARD_CHUNK = 4096
_STATS_ROWS = 1024


@dataclass(frozen=True)
class RewardModel:
    """A scoring view of a discriminator: `reward(obs, act, next_obs=None)`.

    The learner scores through one bound to its live discriminator; `RewardLearner.snapshot()`
    returns one bound to a frozen copy, so a server can publish weights atomically.
    """

    disc: DiffusionDiscriminator | MLPDiscriminator
    normalizer: InputNormalizer
    reward_scale: float
    device: torch.device
    version: int

    @property
    def obs_dim(self) -> int:
        return self.normalizer.obs_dim

    @property
    def act_dim(self) -> int:
        return self.normalizer.act_dim

    def rows(
        self,
        obs: object,
        act: object,
        next_obs: object | None = None,
        *,
        max_rows: int | None = None,
    ) -> np.ndarray:
        """Discriminator rows x_BD (float32) of an env-space batch, validated once here, or
        ValueError. A server turns requests into rows in its handlers with this, so that the
        batcher and the trainer only ever see valid rows."""
        batch = check_transitions(
            obs,
            act,
            next_obs,
            obs_dim=self.obs_dim,
            act_dim=self.act_dim,
            require_next_obs=self.normalizer.state_only,
            max_rows=max_rows,
        )
        return self.normalizer.rows(batch.obs_BO, batch.act_BA, batch.next_obs_BO)

    def reward_rows(self, x_BD: np.ndarray) -> np.ndarray:
        """Reward of already-validated rows, float32 (B,)."""
        out = np.empty(x_BD.shape[0], np.float32)
        # Both the live learner and snapshots score here, through the discriminator's cached
        # precomputed path (rebuilt whenever the weights change), so equal weights and rows
        # give bitwise-equal rewards in process and over gRPC.
        with torch.inference_mode():
            for start in range(0, x_BD.shape[0], _REWARD_CHUNK):
                chunk = torch.from_numpy(x_BD[start : start + _REWARD_CHUNK]).to(self.device)
                log_1md = self.disc.reward_log_one_minus_d(chunk)
                reward = reward_from_log_one_minus_d(log_1md, self.reward_scale)
                out[start : start + chunk.shape[0]] = reward.cpu().numpy()
        return out

    def reward(self, obs: object, act: object, next_obs: object | None = None) -> np.ndarray:
        """reward_scale * -log(1 - D_reward(s, a)) per row, float32 (B,), finite."""
        return self.reward_rows(self.rows(obs, act, next_obs))


def _to_torch_tree(value: Any) -> Any:
    """numpy arrays -> tensors (recursively), so a state dict loads with weights_only=True."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {key: _to_torch_tree(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_torch_tree(item) for item in value)
    return value


def _to_numpy_tree(value: Any) -> Any:
    """Inverse of `_to_torch_tree` for the numpy-backed parts of the state."""
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, Mapping):
        return {key: _to_numpy_tree(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_numpy_tree(item) for item in value)
    return value


class RewardLearner:
    """SD2AIL (and its ablations / GAIL) as one engine.

    Args:
        config: the algorithm and its hyperparameters (see `config.preset`).
        demos: expert demonstrations; each episode becomes one prioritized expert buffer.
        device: torch device for the discriminator ("cpu", "cuda", ...).
        seed: seeds the learner's own generators (never the global RNG).
    """

    def __init__(
        self,
        config: LearnerConfig,
        demos: DemoSet,
        *,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        if config.env_id and demos.env_id != config.env_id:
            raise ValueError(f"demo store holds {demos.env_id!r} demos, expected {config.env_id!r}")
        if demos.n_episodes < 1:
            raise ValueError("expected at least one expert episode, got none")
        self.config = config
        self.env_id = demos.env_id
        self.seed = seed
        self.device = torch.device(device)
        self.normalizer = InputNormalizer.from_expert(
            demos.obs,
            demos.action_low,
            demos.action_high,
            normalize_obs=config.normalize_obs,
            state_only=config.state_only,
        )
        # Weights and the reward-noise table are drawn on the CPU (where modules are built), so
        # a seed gives the same initial model on every device; training noise is drawn on the
        # device by its own generator.
        init_gen = torch.Generator().manual_seed(seed)
        self._torch_gen = torch.Generator(device=self.device)
        self._torch_gen.manual_seed(seed + 2)
        self._rng = np.random.default_rng(seed)
        self.disc = build_discriminator(
            self.normalizer.input_dim,
            config.discriminator,
            config.diffusion,
            init_gen,
            action_dims=self.normalizer.action_dims,
        ).to(self.device)
        dc = config.discriminator
        self.optimizer = torch.optim.Adam(self.disc.parameters(), lr=dc.lr, betas=dc.adam_betas)
        trajectories = [
            self.normalizer.rows(demos.obs[s], demos.action[s], demos.next_obs[s])
            for s in demos.episode_slices()
        ]
        self.replay = ExpertReplay(
            trajectories,
            config=config.pedr,
            pseudo_dim=self.normalizer.input_dim,
            rng=np.random.default_rng(seed + 1),
        )
        self._expert_rows = self.replay.expert_rows()
        self.agent = AgentBuffer(config.agent_capacity, self.normalizer.input_dim)
        self.n_updates = 0
        self.threshold = float("nan")
        self.last_acceptance = float("nan")
        self.candidates_total = 0
        self.accepted_total = 0
        self._last_losses: dict[str, float] = {}

    # ----------------------------------------------------------------- scoring
    @property
    def obs_dim(self) -> int:
        return self.normalizer.obs_dim

    @property
    def act_dim(self) -> int:
        return self.normalizer.act_dim

    @property
    def algo(self) -> str:
        return self.config.algo

    @property
    def requires_next_obs(self) -> bool:
        """True for a state-only discriminator, which scores (s, s')."""
        return self.normalizer.state_only

    @property
    def action_low(self) -> np.ndarray:
        """Env-space action bounds from the demo store (float32, (A,))."""
        return self.normalizer.act_low_A

    @property
    def action_high(self) -> np.ndarray:
        return self.normalizer.act_high_A

    @property
    def model_version(self) -> int:
        """Increases by one with every discriminator update."""
        return self.n_updates

    def _model(self) -> RewardModel:
        return RewardModel(
            disc=self.disc,
            normalizer=self.normalizer,
            reward_scale=self.config.discriminator.reward_scale,
            device=self.device,
            version=self.model_version,
        )

    def reward(self, obs: object, act: object, next_obs: object | None = None) -> np.ndarray:
        """reward_scale * -log(1 - D_reward(s, a)) per row: float32 (B,), deterministic given
        the weights. Raises ValueError on a malformed batch."""
        return self._model().reward(obs, act, next_obs)

    def snapshot(self) -> RewardModel:
        """A frozen copy of the current reward function (weights copied, not shared)."""
        frozen = copy.deepcopy(self.disc).eval()
        for param in frozen.parameters():
            param.requires_grad_(False)
        return RewardModel(
            disc=frozen,
            normalizer=self.normalizer,
            reward_scale=self.config.discriminator.reward_scale,
            device=self.device,
            version=self.model_version,
        )

    # ---------------------------------------------------------------- training
    def add_agent(self, obs: object, act: object, next_obs: object | None = None) -> int:
        """Append agent transitions (env-space) to the agent buffer; returns rows added.
        Raises ValueError on a malformed batch (nothing added)."""
        return self.add_agent_rows(self._model().rows(obs, act, next_obs))

    def add_agent_rows(self, x_BD: np.ndarray) -> int:
        """Append rows made by `RewardModel.rows` of this learner or one of its snapshots
        (already validated: a server validates in its handlers, the trainer only appends)."""
        if x_BD.ndim != 2 or x_BD.shape[1] != self.normalizer.input_dim:
            raise ValueError(
                f"agent rows: expected shape (B, {self.normalizer.input_dim}), got {x_BD.shape}"
            )
        self.agent.add(x_BD)
        return int(x_BD.shape[0])

    @property
    def ready_to_train(self) -> bool:
        return len(self.agent) >= self.config.min_agent_size

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    def _update(self) -> None:
        dc = self.config.discriminator
        expert = self.replay.sample_expert(dc.expert_batch)
        x_agent = self.agent.sample(dc.agent_batch, self._rng)
        pseudo = None
        if self.config.synthetic.enabled and self.replay.pseudo_size > 0:
            pseudo = self.replay.sample_pseudo(dc.expert_batch * dc.pseudo_ratio)
        self.disc.train()
        out = bce_loss(
            self.disc,
            x_expert_BD=self._tensor(expert.x_BD),
            w_expert_B=self._tensor(expert.weights_B),
            x_agent_BD=self._tensor(x_agent),
            x_pseudo_BD=None if pseudo is None else self._tensor(pseudo.x_BD),
            w_pseudo_B=None if pseudo is None else self._tensor(pseudo.weights_B),
            config=dc,
            generator=self._torch_gen,
        )
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"discriminator loss is not finite: {out}")
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self.disc.eval()
        self.replay.update_expert(expert, out.d_train_expert_B.cpu().numpy())
        if pseudo is not None and out.d_train_pseudo_B is not None:
            self.replay.update_pseudo(pseudo, out.d_train_pseudo_B.cpu().numpy())
        self.n_updates += 1
        self._last_losses = {
            "loss/expert": out.expert_term,
            "loss/agent": out.agent_term,
            "loss/pseudo": out.pseudo_term,
            "loss/grad_penalty": out.grad_penalty,
            "d_train/expert": float(out.d_train_expert_B.mean()),
            "d_train/agent": float(out.d_train_agent_B.mean()),
        }
        sc = self.config.synthetic
        if sc.enabled and (self.n_updates - 1) % sc.refresh_every == 0:
            self._generate(expert.x_BD)

    def _generate(self, x_expert_BD: np.ndarray) -> None:
        """One bulk generation round: threshold on the current expert batch, then filter."""
        assert isinstance(self.disc, DiffusionDiscriminator)
        sc = self.config.synthetic
        self.threshold = dynamic_threshold(self.disc, self._tensor(x_expert_BD))
        result = generate_pseudo_experts(
            self.disc,
            n_candidates=sc.candidates_per_update * sc.refresh_every,
            threshold=self.threshold,
            generator=self._torch_gen,
            max_action=sc.max_action,
        )
        self.last_acceptance = result.acceptance_rate
        self.candidates_total += result.n_candidates
        self.accepted_total += int(result.accepted_ND.shape[0])
        if result.accepted_ND.shape[0] > 0:
            self.replay.add_pseudo(result.accepted_ND.cpu().numpy())

    def train(self, n_updates: int) -> dict[str, float]:
        """Run `n_updates` discriminator updates; returns the last update's loss figures."""
        if n_updates < 0:
            raise ValueError(f"n_updates must be >= 0, got {n_updates}")
        if n_updates and not self.ready_to_train:
            raise RuntimeError(
                f"training needs at least {self.config.min_agent_size} agent transitions, "
                f"the agent buffer holds {len(self.agent)}"
            )
        for _ in range(n_updates):
            self._update()
        return dict(self._last_losses)

    # ------------------------------------------------------------- monitoring
    def _mean_d(self, x_ND: np.ndarray) -> float:
        if x_ND.shape[0] == 0:
            return float("nan")
        return float(self.d_reward_of_rows(x_ND).mean())

    def stats(self) -> dict[str, float]:
        """Monitoring figures; reads state, never changes it (no RNG draws)."""
        stride = max(1, self._expert_rows.shape[0] // _STATS_ROWS)
        expert_rows = self._expert_rows[::stride]
        pseudo_rows = self.replay.pseudo_latest(_STATS_ROWS)
        out = {
            "d_reward/expert": self._mean_d(expert_rows),
            "d_reward/agent": self._mean_d(self.agent.latest(_STATS_ROWS)),
            "d_reward/pseudo": self._mean_d(pseudo_rows),
            "pseudo/frechet_to_expert": frechet_distance(pseudo_rows, expert_rows),
            "pseudo/threshold": self.threshold,
            "pseudo/acceptance_last": self.last_acceptance,
            "pseudo/acceptance_total": self.accepted_total / max(self.candidates_total, 1),
            "buffer/expert": float(self.replay.expert_size),
            "buffer/pseudo": float(self.replay.pseudo_size),
            "buffer/agent": float(len(self.agent)),
            "agent/total_pushed": float(self.agent.total_added),
            "updates": float(self.n_updates),
            "model_version": float(self.model_version),
        }
        out.update({f"priority/{k}": v for k, v in self.replay.priority_summary().items()})
        out.update(self._last_losses)
        return out

    def pseudo_expert_rows(self, n: int) -> np.ndarray:
        """Up to `n` most recent pseudo-expert rows (normalised discriminator space)."""
        return self.replay.pseudo_latest(n)

    def expert_rows(self) -> np.ndarray:
        """All expert rows in discriminator space."""
        return self._expert_rows

    def d_reward_of_rows(self, x_ND: np.ndarray) -> np.ndarray:
        """D_reward of rows in discriminator space (for diagnostics and tests)."""
        return d_reward(self.disc, self._tensor(x_ND)).cpu().numpy()

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly; tensors and plain Python values only."""
        return {
            "format": STATE_FORMAT,
            "config": json.dumps(to_dict(self.config)),
            "env_id": self.env_id,
            "seed": self.seed,
            "disc": {k: v.detach().cpu().clone() for k, v in self.disc.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "normalizer": _to_torch_tree(self.normalizer.state_dict()),
            "replay": _to_torch_tree(self.replay.state_dict()),
            "agent": _to_torch_tree(self.agent.state_dict()),
            "rng": {
                "numpy": json.dumps(self._rng.bit_generator.state),
                "torch": self._torch_gen.get_state(),
            },
            "counters": {
                "n_updates": self.n_updates,
                "threshold": self.threshold,
                "last_acceptance": self.last_acceptance,
                "candidates_total": self.candidates_total,
                "accepted_total": self.accepted_total,
            },
            "last_losses": dict(self._last_losses),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()`; refuses one from another format, env or shape.

        The state is copied first: parts of it would otherwise be shared with whatever else
        holds it (another learner loaded from the same dict) and move when that one trains."""
        state = copy.deepcopy(dict(state))
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"learner state: expected format {STATE_FORMAT}, got {state.get('format')}"
            )
        if state.get("env_id") != self.env_id:
            raise ValueError(
                f"learner state is for {state.get('env_id')!r}, expected {self.env_id!r}"
            )
        saved_config = from_dict(json.loads(state["config"]))
        if saved_config != self.config:
            raise ValueError("learner state was saved with a different configuration")
        self.disc.load_state_dict(state["disc"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.normalizer = InputNormalizer.from_state_dict(_to_numpy_tree(state["normalizer"]))
        self.replay.load_state_dict(_to_numpy_tree(state["replay"]))
        self._expert_rows = self.replay.expert_rows()
        self.agent.load_state_dict(_to_numpy_tree(state["agent"]))
        self._rng.bit_generator.state = json.loads(state["rng"]["numpy"])
        restore_generator(self._torch_gen, state["rng"]["torch"])
        counters = state["counters"]
        self.n_updates = int(counters["n_updates"])
        self.threshold = float(counters["threshold"])
        self.last_acceptance = float(counters["last_acceptance"])
        self.candidates_total = int(counters["candidates_total"])
        self.accepted_total = int(counters["accepted_total"])
        self._last_losses = {k: float(v) for k, v in state["last_losses"].items()}

    @classmethod
    def config_from_state(cls, state: Mapping[str, Any]) -> LearnerConfig:
        """The configuration a saved state was made with (to rebuild a learner for it)."""
        return from_dict(json.loads(state["config"]))


def restore_generator(gen: torch.Generator, saved: Tensor) -> None:
    """Puts a saved torch generator state back. A state saved on another device type (the
    CPU's Mersenne Twister, 5,056 bytes, against CUDA's Philox seed and offset, 16) cannot be
    set: the stream then restarts from a seed derived from the saved state, so a checkpoint
    resumed across devices still resumes deterministically (everything else carries over)."""
    saved = saved.cpu()
    if saved.numel() == gen.get_state().numel():
        gen.set_state(saved)
        return
    digest = hashlib.sha256(saved.numpy().tobytes()).digest()
    gen.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
