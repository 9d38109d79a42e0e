"""Expert policies for the demos: SAC on the env's TRUE reward, then demonstrations from it.

One cleanrl-style script on Tianshou 2.0.1's procedural API (collectors + `algorithm.update`,
no Trainer object)::

    python agents/expert.py train --env Pendulum-v1 --steps 20000 --eval-every 2000
    python agents/expert.py train --env Hopper-v5 --steps 1000000 --seed 0 \\
        --run-dir runs/expert-Hopper-v5-seed0
    python agents/expert.py train --run-dir runs/expert-Hopper-v5-seed0 --resume
    python agents/expert.py record --run-dir runs/expert-Hopper-v5-seed0 \\
        --out demos/Hopper-v5.zarr --episodes 40

Why a hand-written loop rather than `algorithm.run_training`: Tianshou's OffPolicyTrainer scans
the whole replay buffer for NaNs after every collect step (O(buffer size) per env step) and
redraws a progress bar every step. Here the loop collects `--chunk` env steps, then runs the
same number of gradient updates (one update per env step on average, as in Tianshou's
examples/mujoco/mujoco_sac.py), and logs a line every `--log-every-s` seconds.

Run directory (`--run-dir`):

    config.json               the TrainArgs of the run (`--resume` reuses them)
    actor_spec.json           what is needed to rebuild the actor (sizes, action bounds)
    metrics.csv               env_step, eval_return_mean, eval_return_std, wall_time, steps_per_s
    actor.pt, actor.json      latest evaluated actor (state_dict of tensors) and its evaluation
    best_actor.pt, best_actor.json   actor of the best evaluation so far
    checkpoints/LATEST        name of the newest complete checkpoint directory
    checkpoints/step-NNNNNNNNN/
        algorithm.pt          weights, target networks, every optimiser, torch RNG state
        buffer.npz            replay buffer arrays and its sampler's RNG state (no pickle)
        state.json            step counters, best return, wall time

Every file is written under a temporary name and moved into place with os.replace, so a run
killed at any moment continues from its last complete checkpoint with `train --resume`.
SIGTERM / Ctrl-C save a checkpoint before exiting.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shlex
import shutil
import signal
import sys
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, Final, cast

import gymnasium as gym
import numpy as np
import tianshou
import torch
from tianshou.algorithm import SAC
from tianshou.algorithm.modelfree.sac import AutoAlpha, SACPolicy, SACTrainingStats
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Batch, Collector, CollectStats, ReplayBuffer
from tianshou.data.types import ObsBatchProtocol
from tianshou.env import DummyVectorEnv
from tianshou.utils.net.common import Net
from tianshou.utils.net.continuous import ContinuousActorProbabilistic, ContinuousCritic
from tianshou.utils.torch_utils import policy_within_training_step

log = logging.getLogger("expert")

METRICS_FIELDS: Final = (
    "env_step",
    "eval_return_mean",
    "eval_return_std",
    "wall_time",
    "steps_per_s",
)
EVAL_SEED_OFFSET: Final = 1_000_000
"""Evaluation env i is seeded with seed + EVAL_SEED_OFFSET + i before every evaluation, so all
evaluations of a run start from the same states and never share seeds with training."""
EXPERT_ALGORITHM: Final = f"SAC (tianshou {tianshou.__version__})"


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def flag(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field that `add_flags` exposes as `--field-name` with this help text."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass(frozen=True)
class TrainArgs:
    """`train`: SAC on the env's true reward (defaults: Tianshou's mujoco_sac.py)."""

    env: str = flag("Hopper-v5", "Gymnasium env id with a Box action space.")
    steps: int = flag(1_000_000, "Total env steps, random warm-up included.")
    seed: int = flag(0, "Seed of torch, the replay sampler and the training env.")
    run_dir: str = flag("", "Output directory; empty means runs/expert-<env>-seed<seed>.")
    resume: bool = flag(False, "Continue from the latest checkpoint in --run-dir.")
    hidden_sizes: tuple[int, ...] = flag(
        (256, 256), "Hidden layer sizes of the actor and of both critics.", type=int, nargs="+"
    )
    actor_lr: float = flag(1e-3, "Adam learning rate of the actor.")
    critic_lr: float = flag(1e-3, "Adam learning rate of each critic.")
    alpha_lr: float = flag(3e-4, "Adam learning rate of log(alpha) (automatic entropy tuning).")
    target_entropy: float | None = flag(
        None, "Entropy target of the automatic alpha; empty means -|A|.", type=float
    )
    gamma: float = flag(0.99, "Discount factor.")
    tau: float = flag(0.005, "Polyak coefficient of the target critics.")
    batch_size: int = flag(256, "Minibatch size of each gradient update.")
    buffer_size: int = flag(1_000_000, "Replay buffer capacity (transitions).")
    start_steps: int | None = flag(
        None,
        "Uniformly random warm-up steps before learning; empty means 10000 for MuJoCo envs, "
        "1000 otherwise.",
        type=int,
    )
    updates_per_step: float = flag(1.0, "Gradient updates per env step (after the warm-up).")
    chunk: int = flag(
        64, "Env steps collected between blocks of updates (speed only; same update ratio)."
    )
    eval_every: int = flag(10_000, "Env steps between evaluations.")
    eval_episodes: int = flag(10, "Deterministic evaluation episodes (true reward), one env each.")
    checkpoint_every: int = flag(
        50_000, "Env steps between checkpoints (one is also saved at the end)."
    )
    keep_checkpoints: int = flag(2, "Number of checkpoint directories kept.")
    stop_return: float | None = flag(
        None, "Stop (with a checkpoint) once the evaluation mean return reaches this.", type=float
    )
    threads: int = flag(1, "torch.set_num_threads (1 was fastest for 256-wide MLPs on 2 cores).")
    log_every_s: float = flag(30.0, "Seconds between progress log lines.")

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/expert-{self.env}-seed{self.seed}")


RESUME_OVERRIDABLE: Final = frozenset(
    {
        "steps",
        "chunk",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "stop_return",
        "threads",
        "log_every_s",
        "resume",
        "run_dir",
    }
)
"""Flags that may differ from the stored config.json when a run is resumed."""


@dataclass(frozen=True)
class RecordArgs:
    """`record`: demonstrations from a trained expert, written with sd2ail_reward.demos."""

    run_dir: str = flag("", "Training run directory (required).")
    out: str = flag("", "Demo store to write; empty means demos/<env>.zarr.")
    episodes: int = flag(40, "Number of episodes to record.")
    first_seed: int = flag(
        10_000, "Reset seed of the first episode; episode i uses first_seed + i."
    )
    actor: str = flag(
        "best", "Actor to use: best_actor.pt or actor.pt.", choices=("best", "latest")
    )
    min_return: float | None = flag(
        None, "Exit with status 1 when the mean recorded return is below this.", type=float
    )
    threads: int = flag(1, "torch.set_num_threads.")


def add_flags(parser: argparse.ArgumentParser, cls: type[TrainArgs] | type[RecordArgs]) -> None:
    """One `--flag` per dataclass field. Defaults are SUPPRESSed so that `parse_args` can tell
    the flags actually given (needed to merge them with a resumed run's stored config)."""
    for f in fields(cls):
        kwargs = dict(f.metadata)
        help_text = kwargs.pop("help") + ("" if f.default == "" else f" (default: {f.default})")
        name = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(
                name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            kwargs.setdefault("type", type(f.default))
            parser.add_argument(name, default=argparse.SUPPRESS, help=help_text, **kwargs)


def train_args_from_dict(values: dict[str, Any]) -> TrainArgs:
    known = {f.name for f in fields(TrainArgs)}
    values = {k: v for k, v in values.items() if k in known}
    if "hidden_sizes" in values:
        values["hidden_sizes"] = tuple(int(h) for h in values["hidden_sizes"])
    return TrainArgs(**values)


def resolve_train_args(given: dict[str, Any]) -> TrainArgs:
    """Fresh run: defaults + given flags. Resume: the stored config + the given flags that may
    change (RESUME_OVERRIDABLE); any other differing flag is an error."""
    args = train_args_from_dict(given)
    config_path = args.run_path / "config.json"
    if not args.resume or not config_path.exists():
        return args
    stored = train_args_from_dict(json.loads(config_path.read_text()))
    conflicts = [
        k for k in given if k not in RESUME_OVERRIDABLE and getattr(args, k) != getattr(stored, k)
    ]
    if conflicts:
        raise SystemExit(f"--resume cannot change {conflicts} of {config_path}")
    merged = {**asdict(stored), **{k: getattr(args, k) for k in given}}
    return train_args_from_dict(merged)


def parse_args(argv: Sequence[str] | None = None) -> TrainArgs | RecordArgs:
    parser = argparse.ArgumentParser(
        prog="expert.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_flags(sub.add_parser("train", help=TrainArgs.__doc__), TrainArgs)
    add_flags(sub.add_parser("record", help=RecordArgs.__doc__), RecordArgs)
    given = vars(parser.parse_args(argv))
    command = given.pop("command")
    if command == "train":
        return resolve_train_args(given)
    if not given.get("run_dir"):
        parser.error("record needs --run-dir")
    return RecordArgs(**given)


# --------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------


def box_spaces(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    env = gym.make(env_id)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(obs_space, gym.spaces.Box) or not isinstance(act_space, gym.spaces.Box):
        raise SystemExit(f"{env_id}: SAC needs Box observation and action spaces")
    return obs_space, act_space


def is_mujoco(env_id: str) -> bool:
    return "mujoco" in str(gym.spec(env_id).entry_point)


ObsStats = tuple[np.ndarray, np.ndarray]
"""(mean, std) of the observation dims, for networks that see normalised observations."""


class InputScaledNet(Net):
    """`Net` on (x - shift) / scale. With the demos' obs mean and std this is the reference's
    `ScaledEnv` (`scale_env_with_demo_stats`) moved inside the network, so the envs, the
    replay buffer and the reward server all keep raw observations; the statistics are buffers,
    so a saved actor carries them. For a critic the input is [obs, act] and the action dims get
    shift 0 and scale 1 (the reference does not normalise actions)."""

    input_shift: torch.Tensor
    input_scale: torch.Tensor

    def __init__(self, *, shift: np.ndarray, scale: np.ndarray, **net_kwargs: Any) -> None:
        super().__init__(**net_kwargs)
        self.register_buffer("input_shift", torch.as_tensor(shift, dtype=torch.float32))
        self.register_buffer("input_scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(
        self, obs: Any, state: Any = None, info: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, Any]:
        x = torch.as_tensor(obs, device=self.input_shift.device, dtype=torch.float32)
        return super().forward((x - self.input_shift) / self.input_scale, state, info)


def _scale_of(std: np.ndarray) -> np.ndarray:
    """std + float32 eps, as the reference divides by."""
    return np.asarray(std, dtype=np.float32) + np.finfo(np.float32).eps


def make_actor(
    obs_shape: Sequence[int],
    act_shape: Sequence[int],
    hidden_sizes: Sequence[int],
    obs_stats: ObsStats | None = None,
) -> ContinuousActorProbabilistic:
    """Gaussian actor with state-dependent sigma; SACPolicy squashes its samples with tanh.
    With `obs_stats` it sees observations normalised by them."""
    kwargs: dict[str, Any] = dict(state_shape=tuple(obs_shape), hidden_sizes=hidden_sizes)
    net = (
        Net(**kwargs)
        if obs_stats is None
        else InputScaledNet(shift=obs_stats[0], scale=_scale_of(obs_stats[1]), **kwargs)
    )
    return ContinuousActorProbabilistic(
        preprocess_net=net,
        action_shape=tuple(act_shape),
        unbounded=True,
        conditioned_sigma=True,
    )


def make_critic(
    obs_shape: Sequence[int],
    act_shape: Sequence[int],
    hidden_sizes: Sequence[int],
    obs_stats: ObsStats | None = None,
    layer_norm: bool = False,
) -> ContinuousCritic:
    """Q(s, a) MLP; `layer_norm` puts a LayerNorm before each hidden activation, which bounds
    how far Q can extrapolate to inputs far from the data (Ball et al., 2023, RLPD)."""
    kwargs: dict[str, Any] = dict(
        state_shape=tuple(obs_shape),
        action_shape=tuple(act_shape),
        hidden_sizes=hidden_sizes,
        concat=True,
        norm_layer=torch.nn.LayerNorm if layer_norm else None,
    )
    if obs_stats is None:
        return ContinuousCritic(preprocess_net=Net(**kwargs))
    n_act = int(np.prod(act_shape))
    shift = np.concatenate([obs_stats[0], np.zeros(n_act)])
    scale = np.concatenate([_scale_of(obs_stats[1]), np.ones(n_act, dtype=np.float32)])
    return ContinuousCritic(preprocess_net=InputScaledNet(shift=shift, scale=scale, **kwargs))


def make_policy(actor: torch.nn.Module, action_space: gym.spaces.Box) -> SACPolicy:
    """tanh(Gaussian) actions in [-1, 1], scaled to the env's bounds by `policy.map_action`."""
    return SACPolicy(actor=actor, action_space=action_space, deterministic_eval=True)


def make_sac(args: TrainArgs, obs_space: gym.spaces.Box, act_space: gym.spaces.Box) -> SAC:
    obs_shape, act_shape = obs_space.shape, act_space.shape
    target_entropy = args.target_entropy
    if target_entropy is None:
        target_entropy = -float(np.prod(act_shape))
    return SAC(
        policy=make_policy(make_actor(obs_shape, act_shape, args.hidden_sizes), act_space),
        policy_optim=AdamOptimizerFactory(lr=args.actor_lr),
        critic=make_critic(obs_shape, act_shape, args.hidden_sizes),
        critic_optim=AdamOptimizerFactory(lr=args.critic_lr),
        critic2=make_critic(obs_shape, act_shape, args.hidden_sizes),
        critic2_optim=AdamOptimizerFactory(lr=args.critic_lr),
        tau=args.tau,
        gamma=args.gamma,
        alpha=AutoAlpha(
            target_entropy=target_entropy,
            log_alpha=0.0,
            optim=AdamOptimizerFactory(lr=args.alpha_lr),
        ),
    )


def actor_spec(
    args: TrainArgs, obs_space: gym.spaces.Box, act_space: gym.spaces.Box
) -> dict[str, Any]:
    """Everything `policy_from_spec` needs to rebuild the deterministic expert."""
    return {
        "env_id": args.env,
        "obs_shape": list(obs_space.shape),
        "action_shape": list(act_space.shape),
        "hidden_sizes": list(args.hidden_sizes),
        "action_low": act_space.low.tolist(),
        "action_high": act_space.high.tolist(),
        "actor": "tianshou ContinuousActorProbabilistic(unbounded=True, conditioned_sigma=True)",
        "action_mapping": "a_env = low + (high - low) * (tanh(mu(obs)) + 1) / 2",
    }


def policy_from_spec(spec: dict[str, Any], actor_state: dict[str, torch.Tensor]) -> SACPolicy:
    """The policy of a saved actor; an actor trained on normalised observations carries its
    statistics as buffers (`InputScaledNet`), so the state dict alone tells which it is."""
    obs_stats = None
    if "preprocess.input_shift" in actor_state:
        obs_dim = int(np.prod(spec["obs_shape"]))
        obs_stats = (np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32))
    actor = make_actor(spec["obs_shape"], spec["action_shape"], spec["hidden_sizes"], obs_stats)
    actor.load_state_dict(actor_state)
    action_space = gym.spaces.Box(
        low=np.asarray(spec["action_low"], dtype=np.float32),
        high=np.asarray(spec["action_high"], dtype=np.float32),
        dtype=np.float32,
    )
    return make_policy(actor, action_space)


def deterministic_policy_fn(policy: SACPolicy) -> Callable[[np.ndarray], np.ndarray]:
    """obs (O,) -> env action (A,): the same computation as Tianshou's Collector in a
    deterministic evaluation (policy forward outside a training step gives tanh(mu); then
    `policy.map_action`), so the actions returned are exactly what the env receives."""
    policy.eval()

    def act(obs: np.ndarray) -> np.ndarray:
        batch = cast(ObsBatchProtocol, Batch(obs=np.asarray(obs)[None], info=Batch()))
        with torch.no_grad():
            raw = policy(batch).act
        raw_np = raw.cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        return np.asarray(policy.map_action(raw_np)[0])

    return act


# --------------------------------------------------------------------------------------------
# Files: atomic writes, metrics, actors
# --------------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success fsync it and os.replace it onto `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def append_metrics(
    path: Path, row: dict[str, float], fieldnames: Sequence[str] = METRICS_FIELDS
) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(
    path: Path, max_step: int, fieldnames: Sequence[str] = METRICS_FIELDS
) -> None:
    """Drop rows logged after the checkpoint a run resumes from (they will be logged again)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["env_step"]) <= max_step]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def save_actor(run_dir: Path, name: str, actor: torch.nn.Module, info: dict[str, Any]) -> None:
    """`<name>.pt` (state_dict of tensors only) and `<name>.json` (its evaluation)."""
    state = {k: v.detach().cpu().clone() for k, v in actor.state_dict().items()}
    save_tensors(run_dir / f"{name}.pt", state)
    write_json(run_dir / f"{name}.json", info)


# --------------------------------------------------------------------------------------------
# Checkpoints: algorithm state_dict + replay buffer arrays + counters
# --------------------------------------------------------------------------------------------


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez, but refusing object arrays (nothing is ever pickled; np.load(allow_pickle=False)
    reads it back)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


CHECKPOINT_FILES: Final = ("algorithm.pt", "buffer.npz", "state.json")


def save_checkpoint(
    run_dir: Path, algorithm: SAC, buffer: ReplayBuffer, state: TrainState, keep: int
) -> Path:
    """Write checkpoints/step-N/ through a temporary directory, then point LATEST at it."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.env_step:09d}"
    final, tmp = root / name, root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    alpha_optim = (
        algorithm.alpha._optim.state_dict() if isinstance(algorithm.alpha, AutoAlpha) else {}
    )
    torch.save(
        {
            "algorithm": algorithm.state_dict(),  # networks, target networks, optimisers
            "alpha_optim": alpha_optim,  # AutoAlpha's Adam is not in algorithm.state_dict()
            "torch_rng": torch.get_rng_state(),
        },
        tmp / "algorithm.pt",
    )
    save_npz(tmp / "buffer.npz", buffer_arrays(buffer))
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
    for file in CHECKPOINT_FILES:
        _fsync(tmp / file)
    if final.exists():  # the same step saved again after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    with atomic_path(root / "LATEST") as latest_tmp:
        latest_tmp.write_text(name + "\n")
    for old in sorted(root.glob("step-*"))[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(run_dir: Path) -> Path | None:
    """The directory named by LATEST, else the newest complete step-* directory."""
    root = run_dir / "checkpoints"

    def complete(d: Path) -> bool:
        return d.is_dir() and all((d / f).is_file() for f in CHECKPOINT_FILES)

    latest = root / "LATEST"
    if latest.is_file() and complete(root / latest.read_text().strip()):
        return root / latest.read_text().strip()
    candidates = [d for d in sorted(root.glob("step-*")) if complete(d)]
    return candidates[-1] if candidates else None


def load_checkpoint(path: Path, algorithm: SAC, buffer: ReplayBuffer) -> TrainState:
    data = torch.load(path / "algorithm.pt", map_location="cpu", weights_only=True)
    algorithm.load_state_dict(data["algorithm"])
    if isinstance(algorithm.alpha, AutoAlpha):
        algorithm.alpha._optim.load_state_dict(data["alpha_optim"])
    torch.set_rng_state(data["torch_rng"])
    with np.load(path / "buffer.npz", allow_pickle=False) as npz:
        restore_buffer(buffer, {k: npz[k] for k in npz.files})
    return TrainState(**json.loads((path / "state.json").read_text()))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


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


def evaluate(collector: Collector[CollectStats], envs: DummyVectorEnv, seed: int) -> np.ndarray:
    """One deterministic episode per eval env, with the env's true reward."""
    envs.seed(seed)
    collector.reset()
    stats = collector.collect(n_episode=len(envs))
    return np.asarray(stats.returns, dtype=np.float64)


def next_chunk(args: TrainArgs, step: int, start_steps: int) -> int:
    """Env steps to collect next: at most --chunk, ending exactly on the next evaluation,
    checkpoint, end of warm-up and end of training."""
    limits = [
        args.chunk,
        args.steps - step,
        args.eval_every - step % args.eval_every,
        args.checkpoint_every - step % args.checkpoint_every,
    ]
    if step < start_steps:
        limits.append(start_steps - step)
    return max(1, min(limits))


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m"


def train(args: TrainArgs) -> TrainState:  # noqa: C901 - the loop reads best in one piece
    torch.set_num_threads(args.threads)
    run_dir = args.run_path
    checkpoint = find_checkpoint(run_dir) if args.resume else None
    if not args.resume and (run_dir / "config.json").exists():
        raise SystemExit(f"{run_dir} already holds a run: pass --resume or another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in asdict(args).items() if k != "resume"}
    write_json(run_dir / "config.json", config)

    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    obs_space, act_space = box_spaces(args.env)
    write_json(run_dir / "actor_spec.json", actor_spec(args, obs_space, act_space))
    algorithm = make_sac(args, obs_space, act_space)
    buffer = ReplayBuffer(args.buffer_size, random_seed=args.seed)
    train_envs = DummyVectorEnv([partial(gym.make, args.env)])
    eval_envs = DummyVectorEnv([partial(gym.make, args.env) for _ in range(args.eval_episodes)])
    train_collector = Collector[CollectStats](algorithm, train_envs, buffer, exploration_noise=True)
    eval_collector = Collector[CollectStats](algorithm, eval_envs)
    start_steps = args.start_steps
    if start_steps is None:
        start_steps = 10_000 if is_mujoco(args.env) else 1_000

    state = TrainState()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, algorithm, buffer)
        truncate_metrics(run_dir / "metrics.csv", state.env_step)
        best_json = run_dir / "best_actor.json"
        if best_json.exists():  # a best actor saved after the checkpoint is still a valid one
            best = json.loads(best_json.read_text())
            if state.best_return is None or best["eval_return_mean"] > state.best_return:
                state.best_return, state.best_step = best["eval_return_mean"], best["env_step"]
        log.info(
            "resumed from %s (env step %d, buffer %d)", checkpoint, state.env_step, len(buffer)
        )
    elif args.resume:
        log.info("no checkpoint in %s: starting a fresh run", run_dir)
    log.info(
        "%s: SAC, obs %s, act %s, %d env steps (%d random), run dir %s",
        args.env,
        obs_space.shape,
        act_space.shape,
        args.steps,
        start_steps,
        run_dir,
    )

    train_envs.seed(args.seed + state.env_step)  # fresh episodes after a resume
    train_collector.reset(reset_buffer=False)
    stop = StopRequest()
    session_start, wall_offset = time.perf_counter(), state.wall_time
    recent_returns: deque[float] = deque(maxlen=10)
    last_stats: SACTrainingStats | None = None
    eval_window = [0, 0.0]  # env steps and seconds of training since the last evaluation
    log_window = [0, 0.0]
    last_log = time.perf_counter()
    last_checkpoint_step = state.env_step

    while state.env_step < args.steps and not stop.requested:
        n = next_chunk(args, state.env_step, start_steps)
        t0 = time.perf_counter()
        if state.env_step < start_steps:
            collect_stats = train_collector.collect(n_step=n, random=True)
        else:
            with policy_within_training_step(algorithm.policy):
                collect_stats = train_collector.collect(n_step=n)
                state.update_debt += collect_stats.n_collected_steps * args.updates_per_step
                n_updates = int(state.update_debt)
                state.update_debt -= n_updates
                for _ in range(n_updates):
                    last_stats = cast(SACTrainingStats, algorithm.update(buffer, args.batch_size))
                state.n_updates += n_updates
        dt = time.perf_counter() - t0
        n = collect_stats.n_collected_steps
        state.env_step += n
        state.n_episodes += collect_stats.n_collected_episodes
        recent_returns.extend(float(r) for r in collect_stats.returns)
        for window in (eval_window, log_window):
            window[0] += n
            window[1] += dt
        state.wall_time = wall_offset + time.perf_counter() - session_start

        if state.env_step % args.eval_every == 0 or state.env_step >= args.steps:
            returns = evaluate(eval_collector, eval_envs, args.seed + EVAL_SEED_OFFSET)
            mean, std = float(returns.mean()), float(returns.std())
            speed = eval_window[0] / max(eval_window[1], 1e-9)
            eval_window = [0, 0.0]
            append_metrics(
                run_dir / "metrics.csv",
                {
                    "env_step": state.env_step,
                    "eval_return_mean": round(mean, 3),
                    "eval_return_std": round(std, 3),
                    "wall_time": round(state.wall_time, 1),
                    "steps_per_s": round(speed, 2),
                },
            )
            info = {
                "env_step": state.env_step,
                "eval_return_mean": mean,
                "eval_return_std": std,
                "eval_returns": returns.tolist(),
                "env_id": args.env,
            }
            save_actor(run_dir, "actor", algorithm.policy.actor, info)
            is_best = state.best_return is None or mean > state.best_return
            if is_best:
                state.best_return, state.best_step = mean, state.env_step
                save_actor(run_dir, "best_actor", algorithm.policy.actor, info)
            log.info(
                "eval @ %d: return %.1f +- %.1f%s (%.1f steps/s since last eval)",
                state.env_step,
                mean,
                std,
                " (best)" if is_best else "",
                speed,
            )
            if args.stop_return is not None and mean >= args.stop_return:
                log.info("reached --stop-return %.1f", args.stop_return)
                stop.requested = True

        if state.env_step % args.checkpoint_every == 0:
            save_checkpoint(run_dir, algorithm, buffer, state, args.keep_checkpoints)
            last_checkpoint_step = state.env_step
            log.info("checkpoint @ %d", state.env_step)

        if time.perf_counter() - last_log >= args.log_every_s:
            speed = log_window[0] / max(log_window[1], 1e-9)
            log_window = [0, 0.0]
            last_log = time.perf_counter()
            losses = (
                f"alpha {last_stats.alpha:.3g} | critic {last_stats.critic1_loss:.3g} | "
                f"actor {last_stats.actor_loss:.3g}"
                if last_stats is not None
                else "warm-up"
            )
            train_ret = f"{np.mean(recent_returns):.1f}" if recent_returns else "-"
            eta = (args.steps - state.env_step) / speed if speed > 0 else math.inf
            log.info(
                "step %d/%d | %.1f steps/s | train return (10 ep) %s | %s | eta %s",
                state.env_step,
                args.steps,
                speed,
                train_ret,
                losses,
                format_duration(eta),
            )

    if state.env_step != last_checkpoint_step:
        save_checkpoint(run_dir, algorithm, buffer, state, args.keep_checkpoints)
        log.info("checkpoint @ %d", state.env_step)
    train_envs.close()
    eval_envs.close()
    log.info(
        "done at env step %d: best eval return %s at step %d (%s)",
        state.env_step,
        state.best_return,
        state.best_step,
        run_dir / "best_actor.pt",
    )
    return state


# --------------------------------------------------------------------------------------------
# Recording demonstrations
# --------------------------------------------------------------------------------------------


def record(args: RecordArgs) -> np.ndarray:
    from sd2ail_reward.demos import record_episodes  # only `record` needs the library

    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    config = train_args_from_dict(json.loads((run_dir / "config.json").read_text()))
    spec = json.loads((run_dir / "actor_spec.json").read_text())
    name = "best_actor" if args.actor == "best" else "actor"
    weights_path = run_dir / f"{name}.pt"
    evaluation = json.loads((run_dir / f"{name}.json").read_text())
    actor_state = torch.load(weights_path, map_location="cpu", weights_only=True)
    policy = policy_from_spec(spec, actor_state)
    env_id = spec["env_id"]
    out = Path(args.out or f"demos/{env_id}.zarr")
    out.parent.mkdir(parents=True, exist_ok=True)

    attrs = {
        "expert_algorithm": EXPERT_ALGORITHM,
        "expert_training_steps": int(evaluation["env_step"]),
        "expert_eval_return": float(evaluation["eval_return_mean"]),
        "expert_eval_return_std": float(evaluation["eval_return_std"]),
        "seed": config.seed,
        "command": shlex.join([sys.executable, *sys.argv]),
        "expert_weights": f"{env_id}.expert.pt",
    }
    log.info(
        "recording %d episodes of %s with %s (eval return %.1f at step %d) into %s",
        args.episodes,
        env_id,
        weights_path,
        attrs["expert_eval_return"],
        attrs["expert_training_steps"],
        out,
    )
    returns = np.asarray(
        record_episodes(
            env_id,
            deterministic_policy_fn(policy),
            path=out,
            n_episodes=args.episodes,
            first_seed=args.first_seed,
            attrs=attrs,
            overwrite=True,
        )
    )

    with atomic_path(out.parent / f"{env_id}.expert.pt") as tmp:
        shutil.copyfile(weights_path, tmp)
    write_json(
        out.parent / f"{env_id}.expert.json",
        {
            **spec,
            **{k: v for k, v in attrs.items() if k != "expert_weights"},
            "hyperparameters": {
                k: v
                for k, v in asdict(config).items()
                if k not in ("resume", "run_dir", "threads", "log_every_s")
            },
            "recorded_episodes": args.episodes,
            "recorded_first_seed": args.first_seed,
            "recorded_return_mean": float(returns.mean()),
            "recorded_return_std": float(returns.std()),
            "torch_version": torch.__version__,
            "gymnasium_version": gym.__version__,
            "demo_store": out.name,
        },
    )
    log.info(
        "recorded return %.1f +- %.1f (min %.1f, max %.1f) over %d episodes",
        returns.mean(),
        returns.std(),
        returns.min(),
        returns.max(),
        len(returns),
    )
    if args.min_return is not None and returns.mean() < args.min_return:
        log.error("mean recorded return %.1f < --min-return %.1f", returns.mean(), args.min_return)
        raise SystemExit(1)
    return returns


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )
    args = parse_args(argv)
    if isinstance(args, TrainArgs):
        train(args)
    else:
        record(args)


if __name__ == "__main__":
    main()
