"""Tianshou's SAC update against a plain-torch one of the same networks (issue "Training cost").

    python benchmarks/sac_update_cost.py --rounds 5

`train`'s SAC (`agents.sac.make_sac`, Hopper-v5 dims, 2 x 256, batch 256, no relabelling) does
one `SAC.update` from a replay buffer of 10,000 random transitions inside
`policy_within_training_step`, as the loop does; `train_cost.plain_sac_update` does the same
arithmetic on fixed tensors with no Tianshou (no buffer sampling, batch conversion, n-step
return machinery, mode switches or logging stats). Interleaved in rounds in one process, one
torch thread; the median of each round's updates, then the median over rounds. A cProfile of
the Tianshou update (100 updates) names where its Python time goes.

Writes benchmarks/results/sac_update_cost.csv (one row per round) and prints the table and the
profile's top entries.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.networks import box_spaces  # noqa: E402
from agents.recipes import TrainArgs  # noqa: E402
from agents.sac import make_sac  # noqa: E402
from benchmarks.train_cost import (  # noqa: E402
    median_ms,
    plain_sac_update,
    run_meta,
    write_rows,
)

RESULTS = REPO / "benchmarks" / "results"


def tianshou_sac_update(batch_size: int, seed: int = 0) -> Callable[[], None]:
    """One `SAC.update` of `train`'s SAC from a buffer of random Hopper-shaped transitions."""
    from tianshou.data import Batch, ReplayBuffer
    from tianshou.utils.torch_utils import policy_within_training_step

    obs_space, act_space = box_spaces("Hopper-v5")
    sac = make_sac(TrainArgs(env="Hopper-v5"), obs_space, act_space, None)
    buffer = ReplayBuffer(20_000)
    rng = np.random.default_rng(seed)
    obs_dim, act_dim = obs_space.shape[0], act_space.shape[0]
    for i in range(10_000):
        buffer.add(
            Batch(
                obs=rng.standard_normal(obs_dim).astype(np.float32),
                act=rng.uniform(-1, 1, act_dim).astype(np.float32),
                rew=float(rng.standard_normal()),
                terminated=False,
                truncated=i % 1000 == 999,
                obs_next=rng.standard_normal(obs_dim).astype(np.float32),
                info={},
            )
        )

    def update() -> None:
        with policy_within_training_step(sac.policy):
            sac.update(buffer, batch_size)

    return update


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=60, help="updates per variant per round")
    parser.add_argument("--out", type=Path, default=RESULTS / "sac_update_cost.csv")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    variants = {"tianshou": tianshou_sac_update(256), "plain": plain_sac_update(256)}
    for fn in variants.values():
        for _ in range(10):
            fn()
    load_start = os.getloadavg()[0]
    rows = []
    for round_index in range(args.rounds):
        measured = {name: median_ms(fn, args.repeats, warmup=0) for name, fn in variants.items()}
        row: dict[str, object] = {"round": round_index}
        row.update({f"{name}_ms": round(ms, 3) for name, ms in measured.items()})
        row["ratio"] = round(measured["tianshou"] / measured["plain"], 3)
        rows.append(row)
        print(row, flush=True)
    meta = run_meta(load_start)
    write_rows(args.out, rows, meta)
    tianshou = float(np.median([float(str(r["tianshou_ms"])) for r in rows]))
    plain = float(np.median([float(str(r["plain_ms"])) for r in rows]))
    ratio = float(np.median([float(str(r["ratio"])) for r in rows]))
    print(f"| Tianshou SAC.update | plain torch | ratio (median of rounds) |\n|---:|---:|---:|\n"
          f"| {tianshou:.2f} | {plain:.2f} | {ratio:.3f} |")  # fmt: skip
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(100):
        variants["tianshou"]()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(15)
    print(text.getvalue())
    print(meta)


if __name__ == "__main__":
    main()
