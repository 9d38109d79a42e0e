"""Stable-Baselines3's SAC learning from the SD2AIL reward server through nothing but
`SD2AILRewardWrapper` (needs the `sb3` extra: ``pip install -e '.[sb3]'``).

    python agents/sb3_example.py --steps 20000                  # starts its own local server
    python agents/sb3_example.py --relabel --steps 20000        # + sample-time relabelling
    SD2AIL_REWARD_TOKEN=... python agents/sb3_example.py --server 10.0.0.5:50051

The SD2AIL part is one line per training env::

    env = SD2AILRewardWrapper(Monitor(gym.make(env_id)), reward=client)
    model = SAC("MlpPolicy", env)       # SB3 wraps it in a DummyVecEnv, as for any env

The wrapper replaces the reward at step time with the learned one and pushes every transition
to the server, whose trainer thread runs its discriminator updates on them; a callback calls
`client.sync()` every `--sync-every` steps so that the discriminator keeps pace with the agent.
SB3's `Monitor` sits INSIDE the reward wrapper, so SB3's own episode statistics
(`rollout/ep_rew_mean`, `info["episode"]`) report the env's true return; the agent learns from
the learned reward only. Evaluation is deterministic on an unwrapped env (true return).

`--relabel` adds what SD2AIL's SAC does (and what `sd2ail-reward train` does for Tianshou):
every sampled replay batch is re-scored with the current discriminator
(`RelabelingReplayBuffer`, the pattern of imitation's `ReplayBufferRewardWrapper`); the wrapper
then only pushes (`score_steps=False`). SB3 stores actions scaled to [-1, 1]; the buffer maps
them back to env space before scoring, since the server always speaks env-space actions.

Nothing here is SB3-specific in the library: `SD2AILRewardWrapper` is a plain
`gymnasium.Wrapper`, so `DummyVecEnv` and `SubprocVecEnv` (`--n-envs N --subproc`; each
subprocess opens its own gRPC channel lazily) both work with it.

Without `--server` the script starts `sd2ail-reward serve` on 127.0.0.1 with a free port and a
fresh write token (`sd2ail_reward.spawn`), learning from the expert episodes
chosen with `--demo-episodes` (default 6 of demos/Pendulum-v1.zarr: a full swing-up), and stops
it at the end.
"""

from __future__ import annotations

import csv
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from stable_baselines3.common.vec_env.vec_normalize import VecNormalize

from agents.served_example import ServedAgentArgs, connect, true_return
from sd2ail_reward import RewardClient, SD2AILRewardWrapper
from sd2ail_reward.flags import parse

EVAL_SEED_OFFSET = 1_000_000
"""Evaluation episode i resets with seed + EVAL_SEED_OFFSET + i (as agents/minimal_sac.py):
the same start states at every evaluation, none shared with training or the demo store."""

RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Args(ServedAgentArgs):
    """Flags of agents/sb3_example.py, one per field (the shared ones: `ServedAgentArgs`)."""

    lr: float = 1e-3
    """Adam learning rate (rl-baselines3-zoo's Pendulum-v1 SAC setting)."""
    n_envs: int = 1
    """Training envs, each wrapped with SD2AILRewardWrapper."""
    subproc: bool = False
    """SubprocVecEnv instead of DummyVecEnv."""
    relabel: bool = False
    """Re-score every sampled batch with the current reward."""
    push_batch: int = 256
    """Transitions per push from each wrapper."""


def parse_args(argv: Sequence[str] | None = None) -> Args:
    return parse(Args, argv, description=(__doc__ or "").split("\n\n")[0])


# ------------------------------------------------------------------------------ envs


def make_env(
    env_id: str, reward: RewardClient | str, *, push_batch: int = 256, score_steps: bool = True
) -> gym.Env[Any, Any]:
    """The training env: Monitor (true episode return) inside the reward wrapper."""
    return SD2AILRewardWrapper(
        Monitor(gym.make(env_id)), reward=reward, push_batch=push_batch, score_steps=score_steps
    )


def make_vec_env(args: Args, env_id: str, client: RewardClient) -> VecEnv:
    """`args.n_envs` wrapped envs under SB3's Dummy- or SubprocVecEnv (the client is pickled
    without its channel; each subprocess opens its own)."""

    def thunk() -> gym.Env[Any, Any]:
        return make_env(env_id, client, push_batch=args.push_batch, score_steps=not args.relabel)

    thunks = [thunk] * args.n_envs
    return SubprocVecEnv(thunks) if args.subproc else DummyVecEnv(thunks)


class RelabelingReplayBuffer(ReplayBuffer):
    """SB3 replay buffer whose samples carry the reward of the CURRENT discriminator.

    `reward_fn(obs, act, next_obs)` is `RewardClient.reward` (one batched call per sample).
    Stored actions are SB3's scaled [-1, 1] actions; they are mapped back to the env's bounds
    before scoring. Rewards written at step time are replaced in the sample only.
    """

    def __init__(self, *args: Any, reward_fn: RewardFn, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.action_space, gym.spaces.Box):
            raise TypeError(f"relabelling needs a Box action space, got {self.action_space}")
        self.reward_fn = reward_fn
        self._low = self.action_space.low.astype(np.float32)
        self._high = self.action_space.high.astype(np.float32)

    def env_actions(self, scaled: np.ndarray) -> np.ndarray:
        """SB3's [-1, 1] buffer actions in env space (policy.unscale_action)."""
        return self._low + 0.5 * (scaled + 1.0) * (self._high - self._low)

    def _get_samples(
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> ReplayBufferSamples:
        if env is not None:
            raise ValueError("relabelling scores raw observations; VecNormalize is not supported")
        samples = super()._get_samples(batch_inds, env)
        obs = samples.observations.cpu().numpy()
        act = self.env_actions(samples.actions.cpu().numpy())
        next_obs = samples.next_observations.cpu().numpy()
        rew = np.asarray(self.reward_fn(obs, act, next_obs), np.float32).reshape(-1, 1)
        return samples._replace(rewards=self.to_torch(rew))


# ------------------------------------------------------------------------------ callbacks


class SyncCallback(BaseCallback):
    """`client.sync()` every `every` env steps: the discriminator catches up with the pushes."""

    def __init__(self, client: RewardClient, every: int) -> None:
        super().__init__()
        self.client, self.every, self._next = client, every, every

    def _on_step(self) -> bool:
        if self.every > 0 and self.num_timesteps >= self._next:
            self._next += self.every
            self.client.sync()
        return True


class EvalRow(NamedTuple):
    step: int
    eval_return: float
    best_return: float
    reward_env_corr: float
    d_expert: float
    d_agent: float
    disc_updates: int
    wall_s: float


class TrueReturnEvalCallback(BaseCallback):
    """Every `every` env steps (and at the end): the deterministic policy's true return, the
    correlation of learned and env rewards over the last 2000 training steps, and the server's
    discriminator figures; printed, kept in `rows`, appended to `log_csv` if given."""

    def __init__(
        self, args: Args, env_id: str, client: RewardClient, every: int, log_csv: str = ""
    ) -> None:
        super().__init__()
        self.args, self.env_id, self.client = args, env_id, client
        self.every, self.log_csv = every, log_csv
        self.rows: list[EvalRow] = []
        self.best = -np.inf
        self._next = every
        self._recent: deque[tuple[float, float]] = deque(maxlen=2_000)
        self._start = time.monotonic()

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if not np.isnan(info["sd2ail_reward"]):
                self._recent.append((float(info["sd2ail_reward"]), float(info["env_reward"])))
        if self.every > 0 and self.num_timesteps >= self._next:
            self._next += self.every
            self.evaluate()
        return True

    def _on_training_end(self) -> None:
        if not self.rows or self.rows[-1].step != self.num_timesteps:
            self.evaluate()

    def evaluate(self) -> EvalRow:
        args = self.args
        ret = true_return(
            lambda obs: self.model.predict(obs, deterministic=True)[0],
            self.env_id,
            args.eval_episodes,
            args.seed + EVAL_SEED_OFFSET,
        )
        self.best = max(self.best, ret)
        corr = float("nan")
        if len(self._recent) > 1:
            learned, true = np.array(self._recent).T
            if learned.std() > 0 and true.std() > 0:
                corr = float(np.corrcoef(learned, true)[0, 1])
        stats = self.client.stats()["learner"]
        row = EvalRow(
            step=self.num_timesteps,
            eval_return=round(ret, 2),
            best_return=round(float(self.best), 2),
            reward_env_corr=round(corr, 3),
            d_expert=round(stats.get("d_reward/expert", float("nan")), 3),
            d_agent=round(stats.get("d_reward/agent", float("nan")), 3),
            disc_updates=int(stats.get("updates", 0)),
            wall_s=round(time.monotonic() - self._start, 1),
        )
        self.rows.append(row)
        print("  ".join(f"{k} {v}" for k, v in row._asdict().items()), flush=True)
        if self.log_csv:
            new = not Path(self.log_csv).exists()
            with open(self.log_csv, "a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(EvalRow._fields))
                if new:
                    writer.writeheader()
                writer.writerow(row._asdict())
        return row


# ------------------------------------------------------------------------------ training


def build_model(args: Args, env_id: str, client: RewardClient) -> SAC:
    """SB3's SAC on the wrapped training envs (with the relabelling buffer if asked)."""
    buffer_kwargs: dict[str, Any] = {}
    buffer_class: type[ReplayBuffer] | None = None
    if args.relabel:
        buffer_class, buffer_kwargs = RelabelingReplayBuffer, {"reward_fn": client.reward}
    return SAC(
        "MlpPolicy",
        make_vec_env(args, env_id, client),
        learning_rate=args.lr,
        learning_starts=args.learning_starts,
        batch_size=args.batch_size,
        replay_buffer_class=buffer_class,
        replay_buffer_kwargs=buffer_kwargs,
        policy_kwargs={"net_arch": [args.hidden, args.hidden]},
        seed=args.seed,
        device="cpu",
    )


def train(
    args: Args,
    env_id: str,
    client: RewardClient,
    callbacks: Sequence[BaseCallback] = (),
) -> TrueReturnEvalCallback:
    """Train for `args.steps` env steps; closes the envs (which flushes the last pushes) and
    syncs the server. Returns the evaluation callback (its `rows` and `best`)."""
    model = build_model(args, env_id, client)
    evaluator = TrueReturnEvalCallback(args, env_id, client, args.eval_every, args.log_csv)
    all_callbacks = [SyncCallback(client, args.sync_every), evaluator, *callbacks]
    try:
        model.learn(total_timesteps=args.steps, callback=CallbackList(all_callbacks))
    finally:
        env = model.get_env()
        if env is not None:
            env.close()  # flushes each wrapper's last partial push
    client.sync()
    return evaluator


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with ExitStack() as stack:
        client, info = connect(args, stack)
        evaluator = train(args, info.env_id, client)
    print(f"best eval return {evaluator.best:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
