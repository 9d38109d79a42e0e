"""What one discriminator update costs against the bare arithmetic of its rows (issue 15).

For the Hopper-v5 presets sd2ail, diffail and gail (demos/Hopper-v5.zarr, 1 demo,
`RewardLearner` in process, one torch thread) this times `learner.train(n)` once agent rows are
pushed and the pseudo-expert buffer is warm, in blocks of `refresh_every` (50) updates so that
each block holds exactly one pseudo-expert generation round: the per-update figure is amortised
over it. Beside it, in the same rounds, it times the bare arithmetic of the same rows: one
forward + backward + Adam step of a copy of the same network on fixed tensors of the update's
shapes as one batch (2,304 rows for sd2ail, 512 for diffail / gail; no buffers, sampling,
priorities or generation), and for sd2ail the bare forward arithmetic of its generation rows
(the reverse chain's candidates x T plus the D_reward rows of the candidates and of the
threshold's expert batch: the body's Linear + Mish layers only, in cache-sized blocks).

The update is split into parts by timers around the learner's calls, each charged exclusively
(PEDR sum-tree descent; the rest of PEDR sampling, with the importance weights and row
gathers; priority updates; agent sampling; host-to-tensor copies; the loss forward; backward;
Adam; the threshold; the generation's reverse chain and its D_reward filter; other = the rest),
and `reward_256` times `learner.reward` on 256 transitions (one relabelled SAC batch, all T).
`--profile` adds torch.profiler's op table of one sd2ail block.

Every variant is timed once per round, rounds interleaved (A/B/A/B), so a ratio compares
figures taken under the same load. The clock is this thread's CPU time by default: with one
torch thread all work, backward included, runs on the calling thread, so a loaded machine
changes the figures far less than wall time. `--baseline-commit C` adds the "before" variants:
the package as committed in C, extracted to a temporary directory and imported as
`sd2ail_reward_base` beside the working tree's (`after`). `--bf16` adds the working tree's
bf16 autocast variants (`DiscriminatorConfig.compute_dtype`) of the update and the bare
arithmetic.

    python benchmarks/disc_update_cost.py [--rounds 5] [--baseline-commit C] [--bf16] [--profile]
    python benchmarks/disc_update_cost.py --plot-only

Writes `benchmarks/results/disc_update_cost.csv` (`disc_update_cost_profile.txt`) and `.png`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import functools
import importlib
import io
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sd2ail_reward.diffusion import CPU_BLOCK_ROWS  # noqa: E402
from sd2ail_reward.mish import mish_  # noqa: E402

HOPPER = REPO / "demos" / "Hopper-v5.zarr"
RESULTS = REPO / "benchmarks" / "results"
PRESETS = ("sd2ail", "diffail", "gail")
PARTS = (
    "pedr_tree_descent",
    "pedr_sample_weights_gather",
    "pedr_priority_update",
    "agent_sample",
    "host_to_tensor",
    "loss_forward",
    "backward",
    "adam_step",
    "threshold",
    "generation_chain",
    "generation_filter",
    "other",
)
RATIO_WITH_GENERATION = "update_over_bare_step_plus_bare_generation"
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.thread_time, "wall": time.perf_counter}
CLOCK = [CLOCKS["cpu"]]


@dataclasses.dataclass(frozen=True)
class Package:
    """One importable version of the library and the modules the benchmark reaches into."""

    variant: str
    config: ModuleType
    demos: ModuleType
    learner: ModuleType
    synthetic: ModuleType
    pedr: ModuleType
    discriminator: ModuleType


def load_package(variant: str, name: str) -> Package:
    def mod(sub: str) -> ModuleType:
        return importlib.import_module(f"{name}.{sub}")

    return Package(
        variant,
        mod("config"),
        mod("demos"),
        mod("learner"),
        mod("synthetic"),
        mod("pedr"),
        mod("discriminator"),
    )


def extract_baseline(commit: str) -> Package:
    """The package as committed in `commit`, importable as `sd2ail_reward_base`."""
    tar = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "sd2ail_reward"],
        check=True,
        capture_output=True,
    ).stdout
    root = Path(tempfile.mkdtemp(prefix="disc_update_cost_"))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(root, filter="data")
    pkg = root / "sd2ail_reward_base"
    (root / "sd2ail_reward").rename(pkg)
    for path in pkg.rglob("*.py"):
        text = re.sub(r"\bsd2ail_reward\b", "sd2ail_reward_base", path.read_text())
        path.write_text(text)
    (pkg / "__init__.py").write_text('"""Baseline copy (benchmark only)."""\n')
    sys.path.insert(0, str(root))
    return load_package(f"before ({commit[:10]})", "sd2ail_reward_base")


class PartTimer:
    """Accumulates exclusive time per part: a timed call inside another timed call is charged
    to its own part and taken out of the caller's."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []

    def wrap(self, fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            start = CLOCK[0]()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = CLOCK[0]() - start
                self.seconds[part] += elapsed - self._inner.pop()
                if self._inner:
                    self._inner[-1] += elapsed

        return timed


@contextlib.contextmanager
def patched(targets: list[tuple[Any, str, str]], timer: PartTimer) -> Iterator[None]:
    """Wrap attribute `name` of each object with a timer for `part`, restoring them after."""
    present = [(obj, name, part) for obj, name, part in targets if hasattr(obj, name)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in present]
    try:
        for obj, name, part in present:
            setattr(obj, name, timer.wrap(getattr(obj, name), part))
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


def part_targets(pkg: Package, learner: Any) -> list[tuple[Any, str, str]]:
    """What to time in an update, charged to its part (absent attributes are skipped: the
    GAIL discriminator has no `sample`)."""
    return [
        (pkg.pedr.SumTree, "find", "pedr_tree_descent"),
        (learner.replay, "sample_expert", "pedr_sample_weights_gather"),
        (learner.replay, "sample_pseudo", "pedr_sample_weights_gather"),
        (learner.replay, "update_expert", "pedr_priority_update"),
        (learner.replay, "update_pseudo", "pedr_priority_update"),
        (learner.agent, "sample", "agent_sample"),
        (learner, "_tensor", "host_to_tensor"),
        (pkg.learner, "bce_loss", "loss_forward"),
        (torch.Tensor, "backward", "backward"),
        (learner.optimizer, "step", "adam_step"),
        (learner.optimizer, "zero_grad", "adam_step"),
        (pkg.learner, "dynamic_threshold", "threshold"),
        (learner.disc, "sample", "generation_chain"),
        (pkg.synthetic, "filter_candidates", "generation_filter"),
    ]


def make_learner(pkg: Package, algo: str, dtype: str, obs: np.ndarray, act: np.ndarray) -> Any:
    config = pkg.config.preset("hopper", algo)
    if dtype != "float32":
        disc = dataclasses.replace(config.discriminator, compute_dtype=dtype)
        config = dataclasses.replace(config, discriminator=disc)
    demos = pkg.demos.read_demos(HOPPER, num_episodes=1)
    learner = pkg.learner.RewardLearner(config, demos, seed=0)
    learner.add_agent(obs, act, obs)
    learner.train(config.synthetic.refresh_every + 1)  # two generation rounds done
    return learner


def bare_rows(config: Any) -> int:
    dc = config.discriminator
    pseudo = dc.expert_batch * dc.pseudo_ratio if config.synthetic.enabled else 0
    return int(dc.expert_batch + dc.agent_batch + pseudo)


def autocast(dtype: str) -> contextlib.AbstractContextManager[Any]:
    if dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bare_step(learner: Any, dtype: str) -> Callable[[], None]:
    """One forward + backward + Adam step of a copy of the learner's network on fixed tensors
    of the update's shapes, as one batch."""
    disc = copy.deepcopy(learner.disc).train()
    dc = learner.config.discriminator
    opt = torch.optim.Adam(disc.parameters(), lr=dc.lr, betas=dc.adam_betas)
    gen = torch.Generator().manual_seed(1)
    rows, dim = bare_rows(learner.config), learner.normalizer.input_dim
    x = torch.randn((rows, dim), generator=gen)
    if hasattr(disc, "denoiser"):
        t = torch.randint(0, disc.schedule.n_timesteps, (rows,), generator=gen)
        eps = torch.randn((rows, dim), generator=gen)
        denoiser, schedule = disc.denoiser, disc.schedule

        def loss() -> torch.Tensor:
            return (denoiser(schedule.q_sample(x, t, eps), t).float() - eps).pow(2).mean()

    else:
        labels = (torch.arange(rows) < rows // 2).float()
        net = disc.net

        def loss() -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(net(x).squeeze(-1).float(), labels)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(dtype):
            value = loss()
        value.backward()
        opt.step()

    return step


def bare_generation(learner: Any, dtype: str) -> Callable[[], None]:
    """The network arithmetic of one generation round's rows, candidates x T (reverse chain)
    plus (candidates + expert batch) x K x T (D_reward filter and threshold): the body's
    Linear layers and in-place Mish on fixed inputs, in cache-sized blocks; no time embedding,
    noising, chain update, error reduction or random draws."""
    cfg = learner.config
    n_cand = cfg.synthetic.candidates_per_update * cfg.synthetic.refresh_every
    steps, draws = cfg.diffusion.n_timesteps, cfg.diffusion.reward_noise_samples
    total = n_cand * steps + (n_cand + cfg.discriminator.expert_batch) * draws * steps
    body = list(copy.deepcopy(learner.disc.denoiser.body))
    first = body[0]
    assert isinstance(first, torch.nn.Linear)
    block = CPU_BLOCK_ROWS
    x = torch.randn((block, first.in_features), generator=torch.Generator().manual_seed(2))
    sizes = [block] * (total // block) + ([total % block] if total % block else [])

    def run() -> None:
        with torch.no_grad(), autocast(dtype):
            for size in sizes:
                h = x[:size]
                for layer in body:
                    h = layer(h) if isinstance(layer, torch.nn.Linear) else mish_(h)

    return run


@dataclasses.dataclass
class Case:
    pkg: Package
    algo: str
    dtype: str
    learner: Any
    bare: Callable[[], None]
    bare_calls: int
    generation: Callable[[], None] | None
    reward: Callable[[], object]
    times: dict[str, list[float]] = dataclasses.field(default_factory=lambda: defaultdict(list))

    @property
    def name(self) -> str:
        return f"{self.pkg.variant} {self.algo} {self.dtype}"


def seconds(fn: Callable[[], object], calls: int) -> float:
    start = CLOCK[0]()
    for _ in range(calls):
        fn()
    return (CLOCK[0]() - start) / calls


def run_round(case: Case, block: int) -> None:
    timer = PartTimer()
    with patched(part_targets(case.pkg, case.learner), timer):
        update = seconds(lambda: case.learner.train(block), 1) / block
    case.times["update"].append(update * 1e3)
    timer.seconds["other"] = update * block - sum(timer.seconds.values())
    for part in PARTS:
        if part in timer.seconds:
            case.times[part].append(timer.seconds[part] / block * 1e3)
    case.times["bare_step"].append(seconds(case.bare, case.bare_calls) * 1e3)
    case.times["reward_256"].append(seconds(case.reward, 20) * 1e3)
    if case.generation is not None:
        refresh = case.learner.config.synthetic.refresh_every
        case.times["bare_generation"].append(seconds(case.generation, 1) / refresh * 1e3)


def profile_table(case: Case, block: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        case.learner.train(block)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return f"{case.name}, {block} updates (wall-clock profiler times)\n{table}\n"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def summary_rows(case: Case, meta: dict[str, str]) -> list[dict[str, str]]:
    """Median / min / max ms per update of every quantity, and its median ratio to the bare
    step of the same round."""
    times = {k: np.array(v) for k, v in case.times.items()}
    bare = times["bare_step"]
    ratios = {k: v / bare for k, v in times.items()}
    if "bare_generation" in times:
        ratios[RATIO_WITH_GENERATION] = times["update"] / (bare + times["bare_generation"])
    out: list[dict[str, str]] = []
    for quantity, ratio in ratios.items():
        values = times.get(quantity)
        out.append(
            {
                "variant": case.pkg.variant,
                "preset": case.algo,
                "dtype": case.dtype,
                "quantity": quantity,
                "ms_median": "" if values is None else f"{np.median(values):.3f}",
                "ms_min": "" if values is None else f"{values.min():.3f}",
                "ms_max": "" if values is None else f"{values.max():.3f}",
                "over_bare_step_median": f"{np.median(ratio):.3f}",
                **meta,
            }
        )
    return out


def plot(rows: list[dict[str, str]], path: Path) -> None:
    """Left: the SD2AIL update by part beside its bare arithmetic (ms per update), per variant
    and dtype; right: update / bare step of every case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_parts, ax_ratio) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = plt.get_cmap("tab20")
    order = (*PARTS, "bare_step", "bare_generation")
    keys = sorted({(r["variant"], r["dtype"]) for r in rows if r["preset"] == "sd2ail"})
    names: list[str] = []
    labelled: set[str] = set()
    widest = 0.0
    for variant, dtype in keys:
        ms = {
            r["quantity"]: float(r["ms_median"])
            for r in rows
            if (r["variant"], r["dtype"], r["preset"]) == (variant, dtype, "sd2ail")
            and r["ms_median"]
        }
        for kind, parts in (("update", PARTS), ("bare", ("bare_step", "bare_generation"))):
            y = len(names)
            names.append(f"{variant} {dtype} {kind}")
            left = 0.0
            for part in parts:
                if part in ms:
                    label = None if part in labelled else part
                    ax_parts.barh(
                        y, ms[part], left=left, color=colors(order.index(part)), label=label
                    )
                    labelled.add(part)
                    left += ms[part]
            widest = max(widest, left)
    ax_parts.set_yticks(range(len(names)), names, fontsize=7)
    ax_parts.set_xlabel("SD2AIL, ms per update (median of rounds; generation amortised)")
    ax_parts.set_xlim(0.0, 1.6 * widest)  # room for the legend on the right
    ax_parts.legend(fontsize=6, ncol=1, loc="upper right")
    shown = [r for r in rows if r["quantity"] in ("update", RATIO_WITH_GENERATION)]
    ax_ratio.barh(
        [
            f"{r['variant']} {r['preset']} {r['dtype']}"
            + (" (bare step + generation)" if r["quantity"] != "update" else "")
            for r in shown
        ],
        [float(r["over_bare_step_median"]) for r in shown],
        color=["tab:blue" if r["quantity"] == "update" else "tab:cyan" for r in shown],
    )
    ax_ratio.axvline(1.3, color="red", lw=0.8, ls="--")
    ax_ratio.tick_params(axis="y", labelsize=7)
    ax_ratio.set_xlabel("update / its bare arithmetic (median of per-round ratios)")
    for ax in (ax_parts, ax_ratio):
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--baseline-commit", help="add the package of this commit as 'before'")
    parser.add_argument("--bf16", action="store_true", help="add the bf16 autocast variants")
    parser.add_argument("--profile", action="store_true", help="write torch.profiler's op table")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the CSV")
    ns = parser.parse_args()
    if ns.plot_only:
        with (ns.out / "disc_update_cost.csv").open() as f:
            plot(list(csv.DictReader(f)), ns.out / "disc_update_cost.png")
        return
    torch.set_num_threads(ns.threads)
    CLOCK[0] = CLOCKS[ns.clock]
    load_start = os.getloadavg()

    packages = [load_package("after", "sd2ail_reward")]
    if ns.baseline_commit:
        packages.insert(0, extract_baseline(ns.baseline_commit))
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(6000, 11)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(6000, 3)).astype(np.float32)
    cases: list[Case] = []
    for algo in ns.presets:
        for pkg in packages:
            dtypes = ["float32", "bfloat16"] if ns.bf16 and pkg.variant == "after" else ["float32"]
            for dtype in dtypes:
                learner = make_learner(pkg, algo, dtype, obs, act)
                cases.append(
                    Case(
                        pkg=pkg,
                        algo=algo,
                        dtype=dtype,
                        learner=learner,
                        bare=bare_step(learner, dtype),
                        bare_calls=max(5, 46_080 // bare_rows(learner.config)),
                        generation=bare_generation(learner, dtype) if algo == "sd2ail" else None,
                        reward=functools.partial(learner.reward, obs[:256], act[:256]),
                    )
                )
    block = packages[-1].config.preset("hopper", "sd2ail").synthetic.refresh_every
    for case in cases:  # every path once before timing
        run_round(case, block)
        case.times.clear()
    for r in range(ns.rounds):
        for case in cases:
            run_round(case, block)
            print(
                f"round {r} {case.name}: update {case.times['update'][-1]:.1f} ms, "
                f"bare step {case.times['bare_step'][-1]:.1f} ms",
                flush=True,
            )
    load_end = os.getloadavg()
    meta = {
        "rounds": str(ns.rounds),
        "updates_per_block": str(block),
        "threads": str(ns.threads),
        "clock": ns.clock,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "load_avg_1m_start_end": f"{load_start[0]:.1f}/{load_end[0]:.1f}",
    }
    rows = [row for case in cases for row in summary_rows(case, meta)]
    ns.out.mkdir(parents=True, exist_ok=True)
    with (ns.out / "disc_update_cost.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        if (
            row["quantity"] in ("update", "bare_step", "bare_generation", "reward_256")
            or "over" in row["quantity"]
        ):
            print(*(row[k] for k in ("variant", "preset", "dtype", "quantity")), end=" ")
            print(row["ms_median"], row["over_bare_step_median"])
    if ns.profile:
        tables = [profile_table(c, block) for c in cases if c.algo == "sd2ail"]
        (ns.out / "disc_update_cost_profile.txt").write_text("\n".join(tables))
    plot(rows, ns.out / "disc_update_cost.png")
    print("load average (1, 5, 15 min) at start", load_start, "at end", load_end)


if __name__ == "__main__":
    main()
