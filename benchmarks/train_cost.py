"""Where a `train` env step goes, against the arithmetic it cannot avoid (issue "Training cost").

    python benchmarks/train_cost.py                       # 6 configurations, ~20 min alone
    python benchmarks/train_cost.py --algos sd2ail --ratios 0.25 --steps 3000   # one, quick

For each algorithm (sd2ail, diffail, gail) and discriminator updates per env step (0.25, 1.0),
one `sd2ail-reward train` run on Hopper-v5 from one demo (full-size networks, `--steps` env
steps of which `--start-steps` random warm-up), and from its `timings.json` the wall time per
post-warm-up env step split by part: collection (env + policy), SAC update, relabel wait,
Sync wait, and on the server's side discriminator updates, reward calls and weight publishing.

Beside it, in this process and the same run, the bare arithmetic of the same work, one torch
thread each: a plain-torch SAC update of the same networks and batch (no Tianshou), the
reward of one relabel batch (`RewardLearner.reward`, 256 rows, in process), one
discriminator update's forward/backward/Adam on its rows (`disc_update_cost.bare_step`) and,
for SD2AIL, the forward arithmetic of its pseudo-expert generation per update
(`disc_update_cost.bare_generation` / refresh_every). The bound of a configuration is that
arithmetic per env step spread evenly over the cores the run may use: (SAC + relabel reward +
ratio x (discriminator + generation)) / cores. `bound / measured` is the
fraction of the machine's arithmetic the run achieves (the issue's floor: >= 0.8).

Writes benchmarks/results/train_cost.csv and .png; prints the markdown table.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.networks import box_spaces  # noqa: E402
from agents.recipes import TrainArgs  # noqa: E402
from agents.sac import make_sac  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
HOPPER = ["--env", "Hopper-v5", "--demos", "demos/Hopper-v5.zarr", "--num-demos", "1"]
LOOP_PARTS = ("collect", "sac_update", "relabel_wait", "sync_wait")
SERVER_PARTS = ("server_train", "server_reward", "server_publish")


def median_ms(fn: Callable[[], object], repeats: int = 30, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def run_meta(load_start: float, **measured: object) -> dict[str, object]:
    """What made a benchmark's rows: machine, versions, load at start/end and the command."""
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        **measured,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_start_end": f"{load_start:.1f}/{os.getloadavg()[0]:.1f}",
        "command": " ".join(sys.argv),
    }


def write_rows(path: Path, rows: list[dict[str, Any]], meta: dict[str, object]) -> None:
    """`rows` as CSV, every row carrying `meta`'s columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], *meta])
        writer.writeheader()
        writer.writerows({**r, **meta} for r in rows)


def plain_sac_update(batch_size: int, dtype: str = "float32") -> Callable[[], None]:
    """One SAC update of `train`'s networks in plain torch: twin critics on the soft target,
    the actor on min Q minus the entropy term, alpha on its target, Polyak averaging."""
    args = TrainArgs(env="Hopper-v5")
    obs_space, act_space = box_spaces("Hopper-v5")
    sac = make_sac(args, obs_space, act_space, None)
    actor, critics = sac.policy.actor, (sac.critic, sac.critic2)
    targets = (sac.critic_old, sac.critic2_old)
    log_alpha = torch.zeros(1, requires_grad=True)
    optims = [torch.optim.Adam(m.parameters(), lr=3e-4) for m in (actor, *critics)]
    alpha_optim = torch.optim.Adam([log_alpha], lr=3e-4)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(batch_size, obs_space.shape[0], generator=gen)
    act = torch.rand(batch_size, act_space.shape[0], generator=gen) * 2 - 1
    rew, done = torch.randn(batch_size, 1, generator=gen), torch.zeros(batch_size, 1)
    obs_next = torch.randn(batch_size, obs_space.shape[0], generator=gen)

    def sample(o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (mu, sigma), _ = actor(o)
        u = mu + sigma * torch.randn(mu.shape, generator=gen)
        a = torch.tanh(u)
        normal = torch.distributions.Normal(mu, sigma)
        logp = normal.log_prob(u).sum(-1, keepdim=True)
        return a, logp - torch.log(1 - a.pow(2) + 1e-6).sum(-1, keepdim=True)

    def update() -> None:
        alpha = log_alpha.exp().detach()
        with torch.no_grad():
            a_next, logp_next = sample(obs_next)
            q_next = torch.min(*(t(obs_next, a_next) for t in targets)) - alpha * logp_next
            target = rew + 0.99 * (1 - done) * q_next
        for critic, optim in zip(critics, optims[1:], strict=True):
            loss = (critic(obs, act) - target).pow(2).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
        a, logp = sample(obs)
        actor_loss = (alpha * logp - torch.min(*(c(obs, a) for c in critics))).mean()
        optims[0].zero_grad()
        actor_loss.backward()
        optims[0].step()
        alpha_loss = -(log_alpha * (logp.detach() - 1.5)).mean()
        alpha_optim.zero_grad()
        alpha_loss.backward()
        alpha_optim.step()
        with torch.no_grad():
            for target_net, net in zip(targets, critics, strict=True):
                for p_t, p in zip(target_net.parameters(), net.parameters(), strict=True):
                    p_t.mul_(0.995).add_(p, alpha=0.005)

    if dtype == "float32":
        return update

    def update_bf16() -> None:  # `train --sac-dtype bfloat16` autocasts the trunks only; the
        with torch.autocast("cpu", dtype=torch.bfloat16):  # heads are ~1% of the arithmetic
            update()

    return update_bf16


def _timed_updates(start: Any, results: Any, repeats: int) -> None:
    """Median ms of plain SAC updates in a fresh process, started with the others."""
    torch.set_num_threads(1)
    update = plain_sac_update(256)
    for _ in range(5):
        update()
    start.wait()
    results.put(median_ms(update, repeats=repeats, warmup=0))


def two_core_speedup(repeats: int = 60) -> tuple[float, float, float]:
    """(ms per plain SAC update alone, ms each with two processes at once, speedup): the
    throughput two busy processes get from this machine's two cores (2.0 if they scale).
    The bound divides the arithmetic by `--cores`; a speedup below 2 is the hardware's share
    of a missed floor (shared caches, memory bandwidth, or vCPUs that are one core's threads)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    times = []
    for processes in (1, 2):
        start, results = ctx.Barrier(processes), ctx.Queue()
        workers = [
            ctx.Process(target=_timed_updates, args=(start, results, repeats))
            for _ in range(processes)
        ]
        for worker in workers:
            worker.start()
        times.append(float(np.mean([results.get(timeout=600) for _ in workers])))
        for worker in workers:
            worker.join()
    alone, together = times
    return alone, together, 2 * alone / together


def learner_costs(algo: str, compute_dtype: str = "float32") -> tuple[float, float, float]:
    """(relabel reward of 256 rows, one discriminator update's bare forward/backward/Adam, the
    bare forward arithmetic of pseudo-expert generation per update), ms, in the server's
    `compute_dtype`."""
    from benchmarks.disc_update_cost import bare_generation, bare_step
    from sd2ail_reward.config import ALGOS, preset
    from sd2ail_reward.demos import read_demos
    from sd2ail_reward.learner import RewardLearner

    demos = read_demos(REPO / "demos" / "Hopper-v5.zarr", num_episodes=1)
    known = {str(name): name for name in ALGOS}  # the Literal the preset takes
    config = preset("hopper", known[algo])
    dtype: Literal["float32", "bfloat16"] = "bfloat16" if compute_dtype == "bfloat16" else "float32"
    config = dataclasses.replace(
        config, discriminator=dataclasses.replace(config.discriminator, compute_dtype=dtype)
    )
    learner = RewardLearner(config, demos, seed=0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(demos.obs), 256)
    noise = rng.normal(0, 0.1, demos.action[idx].shape).astype(np.float32)
    obs, act = demos.obs[idx], np.clip(demos.action[idx] + noise, -1, 1)
    reward_ms = median_ms(lambda: learner.reward(obs, act))
    synthetic = learner.config.synthetic
    generation_ms = 0.0
    if synthetic.enabled:  # one round every refresh_every updates
        round_ms = median_ms(bare_generation(learner, dtype), repeats=5, warmup=1)
        generation_ms = round_ms / synthetic.refresh_every
    return reward_ms, median_ms(bare_step(learner, dtype), repeats=15), generation_ms


def run_train(
    algo: str,
    ratio: float,
    steps: int,
    start: int,
    server_threads: int,
    compute_dtype: str,
    run_dir: Path,
    pin_cores: bool = False,
    sac_threads: int = 1,
    sac_dtype: str = "float32",
    sync_threads: int = 0,
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "sd2ail_reward.cli", "train", *HOPPER, "--algo", algo,
        "--steps", str(steps), "--start-steps", str(start), "--eval-every", str(steps),
        "--eval-episodes", "2", "--no-progress", "--run-dir", str(run_dir),
        f"--server-arg=--updates-per-transition={ratio}",
        f"--server-arg=--torch-threads={server_threads}",
        f"--server-arg=--compute-dtype={compute_dtype}",
        f"--server-arg=--sync-threads={sync_threads}",
        *(["--pin-cores"] if pin_cores else []),
        "--sac-threads", str(sac_threads), "--sac-dtype", sac_dtype,
    ]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=7200)
    return dict(json.loads((run_dir / "timings.json").read_text()))


def row_of(
    algo: str,
    ratio: float,
    server_threads: int,
    compute_dtype: str,
    timings: dict[str, Any],
    bare: dict[str, float],
    args: Any,
    sac_threads: int = 1,
    pinned: bool = False,
    sac_dtype: str = "float32",
    sync_threads: int = 0,
) -> dict[str, Any]:
    trained = args.steps - args.start_steps
    per_step = {p: 1e3 * float(timings.get(f"{p}_s", 0.0)) / trained for p in LOOP_PARTS}
    # the warm-up's collection is random actions: charge collection per env step over all
    per_step["collect"] = 1e3 * float(timings.get("collect_s", 0.0)) / args.steps
    server = {p: 1e3 * float(timings.get(f"{p}_s", 0.0)) / trained for p in SERVER_PARTS}
    measured = sum(per_step.values())
    bound = (
        bare[f"sac_{sac_dtype}"] + bare["reward"] + ratio * (bare["disc"] + bare["gen"])
    ) / args.cores
    return {
        "algo": algo,
        "ratio": ratio,
        "server_threads": server_threads,
        "sac_threads": sac_threads,
        "sac_dtype": sac_dtype,
        "sync_threads": sync_threads,
        "compute_dtype": compute_dtype,
        "pin_cores": pinned,
        **{f"{p}_ms": round(v, 2) for p, v in per_step.items()},
        **{f"{p}_ms": round(v, 2) for p, v in server.items()},
        "measured_ms_per_step": round(measured, 2),
        "bare_sac_ms": round(bare[f"sac_{sac_dtype}"], 2),
        "bare_reward_ms": round(bare["reward"], 2),
        "bare_disc_update_ms": round(bare["disc"], 2),
        "bare_generation_ms": round(bare["gen"], 2),
        "bound_ms_per_step": round(bound, 2),
        "bound_over_measured": round(bound / measured, 3),
        "prefetch_hits": timings.get("relabel_prefetch_hits", ""),
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r['algo']}\n{r['ratio']}\n{r['server_threads']} thr"
        + "".join(f"\n{term}" for term in variant_terms(r))
        + ("\nbf16" if r.get("compute_dtype") == "bfloat16" else "")
        + ("\npinned" if r.get("pin_cores") else "")
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = np.zeros(len(rows))
    for part in LOOP_PARTS:
        values = np.array([r[f"{part}_ms"] for r in rows])
        ax.bar(labels, values, bottom=bottom, label=part)
        bottom += values
    ax.scatter(labels, [r["bound_ms_per_step"] for r in rows], color="k", marker="_", s=900,
               label="arithmetic bound", zorder=3)  # fmt: skip
    ax.set_ylabel("ms per env step (train's process)")
    ax.set_title("train, Hopper-v5: wall time per env step by part vs the bound")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def variant_terms(row: dict[str, Any]) -> list[str]:
    """The variants a row's run took beyond the defaults (SAC's threads and dtype, the
    trainer's threads in Sync), for the figure's labels and the table alike."""
    threads, sync = int(row.get("sac_threads", 1)), int(row.get("sync_threads", 0))
    return [
        *([f"SAC {threads} threads"] if threads != 1 else []),
        *(["SAC bf16"] if row.get("sac_dtype") == "bfloat16" else []),
        *([f"{sync} threads in Sync"] if sync else []),
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| algo | disc:SAC | server threads | server dtype | collect | SAC update | relabel wait "
        "| Sync wait "
        "| measured | server: disc / reward | bare SAC / reward / disc (+ generation) | bound "
        "| bound / measured |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['algo']} | {r['ratio']} | {r['server_threads']} | {r['compute_dtype']}"
            f"{', pinned' if r.get('pin_cores') else ''}"
            f"{''.join(f', {term}' for term in variant_terms(r))} "
            f"| {r['collect_ms']} "
            f"| {r['sac_update_ms']} | "
            f"{r['relabel_wait_ms']} | {r['sync_wait_ms']} | {r['measured_ms_per_step']} | "
            f"{r['server_train_ms']} / {r['server_reward_ms']} | {r['bare_sac_ms']} / "
            f"{r['bare_reward_ms']} / {r['bare_disc_update_ms']} (+ {r['bare_generation_ms']}) | "
            f"{r['bound_ms_per_step']} | "
            f"{r['bound_over_measured']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=["sd2ail", "diffail", "gail"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 1.0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--start-steps", type=int, default=2000)
    parser.add_argument("--cores", type=int, default=2, help="cores the run may use")
    parser.add_argument(
        "--server-threads",
        nargs="+",
        type=int,
        default=[1],
        help="the reward server's torch threads (each a variant; serve's auto is half the cores)",
    )
    parser.add_argument(
        "--compute-dtypes",
        nargs="+",
        choices=["float32", "bfloat16"],
        default=["float32"],
        help="the server's forward dtype (each a variant, its bare arithmetic in the same dtype)",
    )
    parser.add_argument(
        "--pin-cores",
        action="store_true",
        help="train --pin-cores: SAC on one core, the local server on the others",
    )
    parser.add_argument(
        "--pinning",
        nargs="+",
        choices=["unpinned", "pinned"],
        default=["unpinned"],
        help="each a variant, interleaved in this run (--pin-cores: pinned only)",
    )
    parser.add_argument(
        "--sac-threads",
        nargs="+",
        type=int,
        default=[1],
        help="train --sac-threads: torch threads of SAC's update (each a variant)",
    )
    parser.add_argument(
        "--sac-dtypes",
        nargs="+",
        choices=["float32", "bfloat16"],
        default=["float32"],
        help="train --sac-dtype: SAC's trunks' arithmetic (each a variant, bare SAC alike)",
    )
    parser.add_argument(
        "--sync-threads",
        nargs="+",
        type=int,
        default=[0],
        help="serve --sync-threads: the trainer's threads while train waits in Sync (variants)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "train_cost.csv")
    args = parser.parse_args()
    pinnings = ["pinned"] if args.pin_cores else args.pinning
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    sac_ms = {f"sac_{d}": median_ms(plain_sac_update(256, d)) for d in args.sac_dtypes}
    rows = []
    for algo in args.algos:
        for dtype in args.compute_dtypes:
            reward_ms, disc_ms, gen_ms = learner_costs(algo, dtype)
            bare = {**sac_ms, "reward": reward_ms, "disc": disc_ms, "gen": gen_ms}
            for ratio in args.ratios:
                for threads, sac_threads, pinning, sac_dtype, sync in itertools.product(
                    args.server_threads, args.sac_threads, pinnings, args.sac_dtypes,
                    args.sync_threads,
                ):  # fmt: skip
                    with tempfile.TemporaryDirectory() as tmp:
                        run_dir = Path(tmp) / "r"
                        timings = run_train(
                            algo,
                            ratio,
                            args.steps,
                            args.start_steps,
                            threads,
                            dtype,
                            run_dir,
                            pinning == "pinned",
                            sac_threads,
                            sac_dtype,
                            sync,
                        )
                    row = row_of(
                        algo, ratio, threads, dtype, timings, bare, args, sac_threads,
                        pinning == "pinned", sac_dtype, sync,
                    )  # fmt: skip
                    rows.append(row)
                    print(row, flush=True)
    alone_ms, together_ms, speedup = two_core_speedup()
    print(f"plain SAC update: {alone_ms:.2f} ms alone, {together_ms:.2f} ms each in two "
          f"processes at once: two-core speedup {speedup:.2f}", flush=True)  # fmt: skip
    meta = run_meta(
        load_start,
        sac_update_alone_ms=round(alone_ms, 2),
        sac_update_two_processes_ms=round(together_ms, 2),
        two_core_speedup=round(speedup, 3),
    )
    write_rows(args.out, rows, meta)
    plot(rows, args.out.with_suffix(".png"))
    print(markdown(rows))
    print(meta)


if __name__ == "__main__":
    main()
