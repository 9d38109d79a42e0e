"""torch's Mish against `sd2ail_reward.mish` on CPU, as ratios measured in one run.

Three levels, each timed alternately for the two implementations (so both see the same load):
the activation alone on a (2304, 256) float32 tensor (one Hopper update's loss batch x hidden
width), `RewardLearner.reward` on 256 transitions (the reward of one relabelled SAC batch, all
T timesteps), and one discriminator update (Hopper preset, SD2AIL, PEDR and pseudo-experts).

    python benchmarks/mish.py [--repeats 5] [--threads 1]

Writes `benchmarks/results/mish.csv` and `mish.png`.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sd2ail_reward.discriminator as discriminator_module  # noqa: E402
from sd2ail_reward import mish as ours  # noqa: E402
from sd2ail_reward.config import preset  # noqa: E402
from sd2ail_reward.demos import read_demos  # noqa: E402
from sd2ail_reward.diffusion import Denoiser  # noqa: E402
from sd2ail_reward.learner import RewardLearner  # noqa: E402


def torch_mish_(h: torch.Tensor) -> torch.Tensor:
    return F.mish(h, inplace=True)


def use(learner: RewardLearner, impl: str) -> None:
    """Swap the denoiser's activation modules and the scorer's in-place Mish."""
    denoiser = learner.disc.denoiser
    assert isinstance(denoiser, Denoiser)
    for seq in (denoiser.time_mlp, denoiser.body):
        for i, module in enumerate(seq):
            if isinstance(module, torch.nn.Mish | ours.Mish):
                seq[i] = ours.Mish() if impl == "ours" else torch.nn.Mish()
    scorer_mish = ours.mish_ if impl == "ours" else torch_mish_
    vars(discriminator_module)["mish_"] = scorer_mish  # the name RewardScorer calls


def ms_per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ns = parser.parse_args()
    torch.set_num_threads(ns.threads)

    x = torch.randn(2304, 256, generator=torch.Generator().manual_seed(0))
    x_grad = x.clone().requires_grad_()
    learner = RewardLearner(preset("hopper", "sd2ail"), read_demos(REPO / "demos/Hopper-v5.zarr"))
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(6000, 11)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(6000, 3)).astype(np.float32)
    learner.add_agent(obs, act, obs)
    learner.train(50)  # past the first pseudo-expert generation

    activations: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "ours": ours.mish,
        "torch": F.mish,
    }

    def backward(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        fn(x_grad).sum().backward()

    cases: dict[str, Callable[[str], Callable[[], object]]] = {
        "activation forward, no grad": lambda i: lambda: activations[i](x),
        "activation forward + backward": lambda i: lambda: backward(activations[i]),
        "reward of 256 transitions": lambda i: lambda: learner.reward(obs[:256], act[:256]),
        "discriminator update": lambda i: lambda: learner.train(1),
    }
    calls = {"discriminator update": 10, "reward of 256 transitions": 20}
    rows = []
    for case, make in cases.items():
        times: dict[str, list[float]] = {"torch": [], "ours": []}
        for _ in range(ns.repeats):
            for impl in ("torch", "ours"):
                use(learner, impl)
                times[impl].append(ms_per_call(make(impl), calls.get(case, 50)))
        ratio = float(np.median(np.array(times["torch"]) / np.array(times["ours"])))
        row = {
            "case": case,
            "torch_ms_median": round(float(np.median(times["torch"])), 3),
            "ours_ms_median": round(float(np.median(times["ours"])), 3),
            "speedup_median": round(ratio, 3),
            "threads": ns.threads,
            "torch": torch.__version__,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        }
        rows.append(row)
        print(row, flush=True)
    ns.out.mkdir(parents=True, exist_ok=True)
    with (ns.out / "mish.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [r["case"] for r in rows]
    ax.barh(names, [float(r["speedup_median"]) for r in rows], color="tab:blue")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("speed-up over torch's Mish (median of alternating repeats)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(ns.out / "mish.png", dpi=110)


if __name__ == "__main__":
    main()
