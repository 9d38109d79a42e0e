"""How much of each unit of `train`'s work one process can spread over two cores (issue
"Training cost").

    python benchmarks/thread_scaling.py --rounds 5

`train_cost.py`'s bound spreads all the arithmetic of an env step evenly over the cores. The
work comes in units that each run in one process: SAC's update (in `train`), one discriminator
update and one generation round (in the server). A unit can use the second core only through
torch's intra-op threads, so this times each unit's bare arithmetic at 1 and at 2 torch threads,
interleaved in rounds in one process, and reports the speedup (2.0 if it splits perfectly).
The units: the plain-torch SAC update of `train`'s networks at batch 256
(`train_cost.plain_sac_update`) and Tianshou's `SAC.update` (`sac_update_cost`), and SD2AIL's
discriminator step on its 2,304 rows and its generation arithmetic per round
(`disc_update_cost.bare_step` / `bare_generation`) in float32 and bfloat16.

Writes benchmarks/results/thread_scaling.csv (one row per unit and round) and prints the table.
Meaningful only with the machine quiet: a busy second core makes every speedup ~1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.disc_update_cost import bare_generation, bare_step  # noqa: E402
from benchmarks.sac_update_cost import tianshou_sac_update  # noqa: E402
from benchmarks.train_cost import (  # noqa: E402
    median_ms,
    plain_sac_update,
    run_meta,
    write_rows,
)

RESULTS = REPO / "benchmarks" / "results"


def disc_units() -> dict[str, tuple[Callable[[], None], int]]:
    """SD2AIL's bare discriminator step and generation round at Hopper sizes, per dtype, with
    the repeats each is timed for."""
    from sd2ail_reward.config import preset
    from sd2ail_reward.demos import read_demos
    from sd2ail_reward.learner import RewardLearner

    demos = read_demos(REPO / "demos" / "Hopper-v5.zarr", num_episodes=1)
    units: dict[str, tuple[Callable[[], None], int]] = {}
    dtypes: tuple[Literal["float32", "bfloat16"], ...] = ("float32", "bfloat16")
    for dtype in dtypes:
        config = preset("hopper", "sd2ail")
        config = dataclasses.replace(
            config, discriminator=dataclasses.replace(config.discriminator, compute_dtype=dtype)
        )
        learner = RewardLearner(config, demos, seed=0)
        units[f"sd2ail disc step, {dtype}"] = (bare_step(learner, dtype), 15)
        units[f"sd2ail generation round, {dtype}"] = (bare_generation(learner, dtype), 3)
    return units


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "thread_scaling.csv")
    args = parser.parse_args()
    torch.manual_seed(0)
    units: dict[str, tuple[Callable[[], None], int]] = {
        "plain SAC update": (plain_sac_update(256), 40),
        "Tianshou SAC.update": (tianshou_sac_update(256), 40),
        **disc_units(),
    }
    load_start = os.getloadavg()[0]
    rows = []
    for round_index in range(args.rounds):
        for name, (fn, repeats) in units.items():
            ms = {}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                ms[threads] = median_ms(fn, repeats=repeats, warmup=2)
            rows.append(
                {
                    "unit": name,
                    "round": round_index,
                    "ms_1_thread": round(ms[1], 3),
                    "ms_2_threads": round(ms[2], 3),
                    "speedup": round(ms[1] / ms[2], 3),
                }
            )
            print(rows[-1], flush=True)
    torch.set_num_threads(1)
    meta = run_meta(load_start)
    write_rows(args.out, rows, meta)
    print("| unit | 1 thread (ms) | 2 threads (ms) | speedup, median of rounds (range) |")
    print("|---|---:|---:|---:|")
    for name in units:
        mine = [r for r in rows if r["unit"] == name]
        one = float(np.median([float(str(r["ms_1_thread"])) for r in mine]))
        two = float(np.median([float(str(r["ms_2_threads"])) for r in mine]))
        speedups = [float(str(r["speedup"])) for r in mine]
        print(
            f"| {name} | {one:.2f} | {two:.2f} | {np.median(speedups):.2f} "
            f"({min(speedups):.2f}-{max(speedups):.2f}) |"
        )
    print(meta)


if __name__ == "__main__":
    main()
