"""The one SAC training loop, for every reward source: the env's own (experts, the true-reward
control), a reward server's learned reward, or its frozen discriminator."""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, cast

import gymnasium as gym
from tianshou.algorithm import SAC
from tianshou.algorithm.modelfree.sac import SACTrainingStats
from tianshou.data import Collector, CollectStats, ReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.utils.torch_utils import policy_within_training_step

from agents.actors import actor_spec, save_actor
from agents.checkpoints import (
    TrainState,
    restore_sac_checkpoint,
    sac_checkpoint_store,
    save_sac_checkpoint,
)
from agents.diagnostics import training_diagnostics
from agents.evaluation import evaluate, make_eval_envs, mean_travelled, write_learning_curve
from agents.local_server import wait_for_discriminator
from agents.mixed_precision import bf16_trunks
from agents.networks import box_spaces, policy_obs_stats
from agents.recipes import TrainArgs, training_env_kwargs
from agents.run_files import (
    METRICS,
    last_evaluation_return,
    record_evaluation,
    summarize,
    truncate_metrics,
    write_json,
)
from agents.sac import (
    RelabelingSAC,
    initialise_actor_by_cloning,
    make_sac,
    wrap_actor_optimizer,
)
from sd2ail_reward.checkpoint import Checkpoint, CheckpointStore
from sd2ail_reward.client import RewardClient
from sd2ail_reward.demos import DemoSet
from sd2ail_reward.wrapper import SD2AILRewardWrapper

log = logging.getLogger("sd2ail.train")


class StopRequest:
    """SIGTERM / SIGINT ask the loop to checkpoint and exit; a second signal kills at once."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: checkpointing and exiting (send again to kill now)", signum)
        self.requested = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)


class Progress:
    """A progress bar refreshed at most twice a second, or log lines with --no-progress."""

    def __init__(self, args: TrainArgs, start: int) -> None:
        self.bar: Any = None
        if args.progress:
            from tqdm import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(total=args.steps, initial=start, mininterval=0.5, unit="step")
        self.last_log = time.time()

    def update(self, step: int, n: int, post: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(post, refresh=False)
        elif time.time() - self.last_log > 30:
            self.last_log = time.time()
            log.info("step %d %s", step, " ".join(f"{k} {v}" for k, v in post.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Stopwatch:
    """Seconds spent per part of the loop, summed over the run (timings.json), so that where a
    run's wall time goes is measured by the run itself."""

    def __init__(self, saved: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = dict(saved or {})

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


class SacTraining:
    """One run of the loop: collect a chunk of env steps, then as many SAC updates (while the
    reward server trains its discriminator on that chunk), then `Sync`; evaluate, log and
    checkpoint every `eval_every` steps.

    `client` None trains on the env's own reward (`--reward env`), else on the reward server's.
    Training steps are sampled from the stochastic policy (collection inside
    `policy_within_training_step`, outside of which Tianshou's SAC acts with its mean);
    evaluation is deterministic."""

    def __init__(
        self,
        args: TrainArgs,
        run_dir: Path,
        client: RewardClient | None,
        expert: float,
        demos: DemoSet | None,
    ) -> None:
        self.args, self.run_dir, self.client, self.expert = args, run_dir, client, expert
        obs_space, act_space = box_spaces(args.env)
        self.push = args.reward == "learned"
        self.train_envs = DummyVectorEnv([self._make_train_env])
        self.test_envs, self.trackers = make_eval_envs(args)
        self.train_envs.seed(args.seed)
        self.stopwatch = Stopwatch()
        reward_fn = client.reward if client is not None and args.relabel else None
        obs_stats = policy_obs_stats(args, demos)
        self.algorithm = make_sac(
            args, obs_space, act_space, reward_fn, obs_stats, self.record_relabel_wait
        )
        self.actor_optim = wrap_actor_optimizer(args, self.algorithm, demos, act_space)
        self.buffer = ReplayBuffer(args.buffer_size)
        self.train_collector = Collector[CollectStats](
            self.algorithm, self.train_envs, self.buffer, exploration_noise=True
        )
        self.test_collector = Collector[CollectStats](self.algorithm, self.test_envs)
        self.store = sac_checkpoint_store(run_dir)
        self.state = TrainState()
        self.sac_stats: SACTrainingStats | None = None
        self.stats: dict[str, float] = {}
        self.last_eval = float("nan")
        self.server_before: dict[str, float] = {}
        """The reward server's seconds of earlier sittings (a resumed server counts from 0)."""
        write_json(run_dir / "actor_spec.json", actor_spec(args, obs_space, act_space))
        self.demos, self.act_space = demos, act_space

    def record_relabel_wait(self, seconds: float) -> None:
        self.stopwatch.add("relabel_wait", seconds)

    def _make_train_env(self) -> gym.Env[Any, Any]:
        env = gym.make(self.args.env, **training_env_kwargs(self.args))
        if self.client is None:
            return env
        # relabelling scores every sampled batch, so a step-time reward would be wasted work
        return SD2AILRewardWrapper(
            env,
            reward=self.client,
            push=self.push,
            push_batch=self.args.chunk,
            score_steps=not self.args.relabel,
        )

    def start(self, checkpoint: Checkpoint | None) -> None:
        """From a checkpoint (same step, weights, optimisers and replay buffer), else fresh."""
        args = self.args
        if checkpoint is not None:
            self.state = restore_sac_checkpoint(checkpoint, self.algorithm, self.buffer)
            truncate_metrics(self.run_dir / "metrics.csv", self.state.env_step, METRICS)
            log.info("resumed from %s at env step %d", checkpoint.path, self.state.env_step)
            self.train_envs.seed(args.seed + self.state.env_step)
            self.last_eval = last_evaluation_return(self.run_dir / "metrics.csv")
            self.stats = learner_stats(self.client)
            saved = read_timings(self.run_dir)
            self.stopwatch = Stopwatch(
                {k: v for k, v in saved.items() if not k.startswith("server_")}
            )
            self.server_before = {k: v for k, v in saved.items() if k.startswith("server_")}
        elif args.bc_init_epochs > 0 and self.demos is not None:
            actor = self.algorithm.policy.actor
            initialise_actor_by_cloning(args, actor, self.demos, self.act_space)
        self.train_collector.reset(reset_buffer=False)  # keep a resumed replay buffer
        # a resumed hold goes on where it stopped
        self.actor_optim.skipped = min(self.state.n_updates, args.actor_hold_updates)

    def collect(self, n: int) -> None:
        random = self.state.env_step < self.args.start_steps
        with self.stopwatch.part("collect"):
            if random:
                self.train_collector.collect(n_step=n, random=True)
            else:
                with policy_within_training_step(self.algorithm.policy):
                    self.train_collector.collect(n_step=n)  # sampled actions: SAC explores
        self.state.env_step += n

    def update(self, n: int) -> None:
        """n SAC updates; the server's discriminator trains on the pushed chunk meanwhile
        (`--no-overlap`: before them)."""
        if self.push and not self.args.overlap:
            self.wait_for_discriminator()
        relabel_before = self.stopwatch.seconds.get("relabel_wait", 0.0)
        start = time.perf_counter()
        with (
            policy_within_training_step(self.algorithm.policy),
            bf16_trunks(self.algorithm, self.args.sac_dtype == "bfloat16"),
        ):
            for _ in range(n):
                self.sac_stats = cast(
                    SACTrainingStats,
                    self.algorithm.update(buffer=self.buffer, sample_size=self.args.batch_size),
                )
        relabel = self.stopwatch.seconds.get("relabel_wait", 0.0) - relabel_before
        self.stopwatch.add("sac_update", time.perf_counter() - start - relabel)
        self.state.n_updates += n
        if self.push and self.args.overlap:
            self.wait_for_discriminator()

    def wait_for_discriminator(self) -> None:
        with self.stopwatch.part("sync_wait"):
            wait_for_discriminator(cast(RewardClient, self.client))

    def evaluate_and_save(self, writer: Any) -> bool:
        """True-return evaluation, metrics row, best and latest actors, learning curve and the
        paired checkpoints; whether the evaluation counts (may make best_actor and reach the
        target: with --target-full-episodes, only if none of its episodes fell)."""
        state, actor = self.state, self.algorithm.policy.actor
        with self.stopwatch.part("evaluation"):
            evaluation = evaluate(self.test_collector, self.test_envs, 10_000 + state.env_step)
        returns, fallen = evaluation.returns, evaluation.fallen(self.args.env)
        counts = fallen == 0 or not self.args.target_full_episodes
        with self.stopwatch.part("diagnostics"):
            self.last_eval = float(returns.mean())
            self.stats = learner_stats(self.client)
            diagnostics = training_diagnostics(self.algorithm, self.buffer, self.client)
        record_evaluation(
            self.run_dir, writer, state, (returns, mean_travelled(self.trackers)), self.stats,
            self.sac_stats, diagnostics, state.wall_time, self.actor_optim.last_cloning_mse,
        )  # fmt: skip
        info = {
            "env_step": state.env_step,
            "eval_return_mean": self.last_eval,
            "eval_return_std": float(returns.std()),
            "eval_returns": returns.tolist(),
            "eval_lengths": evaluation.lengths.tolist(),
            "eval_fallen": fallen,
            "env_id": self.args.env,
        }
        save_actor(self.run_dir, "actor", actor, info)
        if not counts:
            log.info("evaluation %.1f not counted: %d of %d episodes fell (--target-full-episodes)",
                     self.last_eval, fallen, len(returns))  # fmt: skip
        elif state.best_return is None or self.last_eval > state.best_return:
            state.best_return, state.best_step = self.last_eval, state.env_step
            save_actor(self.run_dir, "best_actor", actor, info)
        write_learning_curve(
            self.run_dir, self.expert, f"{run_label(self.args)} on {self.args.env}"
        )
        self.save()
        return counts

    def save(self) -> None:
        with self.stopwatch.part("checkpoint"):
            save_paired_checkpoint(self.store, self.algorithm, self.buffer, self.state, self.client)
        write_json(self.run_dir / "timings.json", self.timings())

    def timings(self) -> dict[str, float]:
        """Seconds per part and per env step, summed over the run: this process's parts and
        the reward server's (`server_train`: discriminator updates, `server_reward`: reward
        calls, `server_publish`: weight snapshots)."""
        steps = max(self.state.env_step, 1)
        seconds = dict(self.stopwatch.seconds)
        for key, value in self.stats.items():
            if key.startswith("time/") and key.endswith("_s"):
                name = "server_" + key[len("time/") : -len("_s")]
                seconds[name] = self.server_before.get(name, 0.0) + value
        out = {f"{k}_s": round(v, 2) for k, v in sorted(seconds.items())}
        out.update({f"{k}_ms_per_step": round(1e3 * v / steps, 3) for k, v in seconds.items()})
        out.update(env_steps=self.state.env_step, wall_s=round(self.state.wall_time, 1))
        if isinstance(self.algorithm, RelabelingSAC):  # this sitting's
            out.update(
                relabel_prefetch_hits=self.algorithm.prefetch_hits,
                relabel_prefetch_misses=self.algorithm.prefetch_misses,
            )
        return out

    def run(self) -> dict[str, float]:
        from torch.utils.tensorboard import SummaryWriter

        args, state = self.args, self.state
        writer = SummaryWriter(str(self.run_dir / "tb"))
        stop = StopRequest()
        progress = Progress(args, state.env_step)
        session_start, wall_before = time.time(), state.wall_time
        try:
            while state.env_step < args.steps and not stop.requested:
                random = state.env_step < args.start_steps
                n = min(args.chunk, args.steps - state.env_step)
                if random:
                    n = min(n, args.start_steps - state.env_step)
                self.collect(n)
                if not random:
                    self.update(n)
                state.wall_time = wall_before + time.time() - session_start
                eval_due = (
                    state.env_step // args.eval_every > (state.env_step - n) // args.eval_every
                )
                if eval_due or state.env_step >= args.steps:
                    counts = self.evaluate_and_save(writer)
                    if (
                        counts
                        and args.target_return is not None
                        and self.last_eval >= args.target_return
                    ):
                        log.info(
                            "evaluation return %.1f reached --target-return %.1f at step %d",
                            self.last_eval, args.target_return, state.env_step,
                        )  # fmt: skip
                        break
                progress.update(state.env_step, n, self.progress_fields())
        finally:
            if isinstance(self.algorithm, RelabelingSAC):
                self.algorithm.drain()
            progress.close()
            writer.close()
        if stop.requested:
            self.save()
        return summarize(self.run_dir, self.expert, state)

    def progress_fields(self) -> dict[str, str]:
        nan = float("nan")
        return {
            "eval": f"{self.last_eval:.0f}",
            "D_exp": f"{self.stats.get('d_reward/expert', nan):.2f}",
            "D_agent": f"{self.stats.get('d_reward/agent', nan):.2f}",
        }


def train_sac(
    args: TrainArgs,
    run_dir: Path,
    client: RewardClient | None,
    expert: float,
    demos: DemoSet | None,
    checkpoint: Checkpoint | None = None,
) -> dict[str, float]:
    """Builds the run, resumes it from `checkpoint` if given, and trains to `args.steps`."""
    training = SacTraining(args, run_dir, client, expert, demos)
    training.start(checkpoint)
    return training.run()


def read_timings(run_dir: Path) -> dict[str, float]:
    """The seconds per part a run had summed when it was last saved (for a resume)."""
    path = run_dir / "timings.json"
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    return {
        k[: -len("_s")]: float(v) for k, v in saved.items() if k.endswith("_s") and k != "wall_s"
    }


def run_label(args: TrainArgs) -> str:
    """What a run trained on, for plot titles."""
    if args.reward == "env":
        return f"SAC ({args.sac_recipe} recipe) on the true reward"
    return args.algo + (" (frozen D)" if args.reward == "frozen" else "")


def learner_stats(client: RewardClient | None) -> dict[str, float]:
    return {} if client is None else cast(dict[str, float], client.stats()["learner"])


def save_paired_checkpoint(
    store: CheckpointStore,
    algorithm: SAC,
    buffer: ReplayBuffer,
    state: TrainState,
    client: RewardClient | None,
) -> Path:
    """SAC's checkpoint, recording the server checkpoint written just before it, which is the
    one `latest_sac_checkpoint`'s caller hands a resumed server."""
    if client is not None:
        state.server_generation = client.checkpoint()["generation"]
    return save_sac_checkpoint(store, algorithm, buffer, state)
