"""Runs named grids of `sd2ail-reward train` runs to the end, across as many sittings as it takes.

    python benchmarks/grid.py run hopper-evidence pendulum-ci --parallel 2   # start or resume
    python benchmarks/grid.py status hopper-evidence                         # where runs stand
    python benchmarks/grid.py list                                           # the grids
    scripts/resume_runs.sh        # the session-start command: every grid, in order, nohup

Every run lives in `$SD2AIL_GRID_ROOT/<run name>/` (default `~/sd2ail-runs/grid`). `run` skips
the finished ones (summary.json at the full budget), resumes the started ones (`train --resume`,
from their last SAC checkpoint and the server checkpoint paired with it) and starts the rest,
in the order given, at most `--parallel` at a time, each under an exclusive lock (a second
`run` leaves a running run alone). After each run ends, its files are archived in the repo and
`benchmarks/results/runs.csv` rebuilt (`benchmarks/runs_csv.py`).

A new machine starts with an empty grid root: a run finished in the repo's archive is not run
again, and an unfinished SAC run (an expert, or an imitation run with its reward server's
state) goes on from the carry `carry` committed at the end of the last sitting.
"""

from __future__ import annotations

import argparse
import fcntl
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.recipes import PENDULUM_CI_FLAGS  # noqa: E402
from sd2ail_reward.discriminator import cpu_bf16_supported  # noqa: E402

GRID_ROOT = Path(os.environ.get("SD2AIL_GRID_ROOT", Path.home() / "sd2ail-runs" / "grid"))
"""Outside the work tree, which a new session lays anew: a machine handed to the next session
keeps this, so its runs resume there; their results are archived in the repo as they go
(`benchmarks/runs_csv.py`)."""

HOPPER = ["--env", "Hopper-v5", "--demos", "demos/Hopper-v5.zarr", "--num-demos", "1"]
PENDULUM = ["--env", "Pendulum-v1", "--demos", "demos/Pendulum-v1.zarr", "--demo-episodes", "6"]
DISC_RATIO = "0.25"
"""Discriminator updates per env step of the imitation grids: the paper's 1.0 costs ~120 ms per
env step here against ~33 ms at 0.25 (issue "Training cost"), 7 h against 2 h per 200k run."""


@dataclass(frozen=True)
class GridRun:
    name: str
    args: tuple[str, ...]
    steps: int
    target: float | None = None
    """A run whose evaluation reached this stopped there (`--target-return`) and is done."""
    after: tuple[tuple[str, ...], ...] = ()
    """`sd2ail-reward` commands run once the run has finished ("{run_dir}" filled in), each
    only if the one before succeeded; a marker file keeps them from running twice."""
    full_episodes: bool = False
    """The target counts only an evaluation none of whose episodes fell
    (`--target-full-episodes`, passed again on every resume)."""

    @property
    def run_dir(self) -> Path:
        return GRID_ROOT / self.name

    @property
    def carried(self) -> bool:
        """Whether the run can go on on the next machine (`write_carries`): every run that
        trains SAC (with its reward server's state, where it has one); behaviour cloning
        keeps no checkpoints, and takes minutes."""
        algo = self.args[self.args.index("--algo") + 1] if "--algo" in self.args else ""
        return algo != "bc" or self.reward == "env"

    @property
    def reward(self) -> str:
        return self.args[self.args.index("--reward") + 1] if "--reward" in self.args else "learned"

    def missing_demos(self) -> Path | None:
        """The demo store this run reads, when it is not there (yet)."""
        if "--demos" not in self.args:
            return None
        store = self.args[self.args.index("--demos") + 1]
        return None if not store or (REPO / store).exists() else REPO / store

    def command(self) -> list[str]:
        base = [sys.executable, "-m", "sd2ail_reward.cli", "train", "--no-progress"]
        base += ["--run-dir", str(self.run_dir), "--steps", str(self.steps)]
        target = [] if self.target is None else ["--target-return", str(self.target)]
        if target and self.full_episodes:
            target.append("--target-full-episodes")
        if (self.run_dir / "config.json").exists():
            # the stored config, extended to --steps and to a target raised since it started
            return [*base, "--resume", *target]
        return [*base, *self.args, *target]


def true_reward_run(name: str, recipe: str, seed: int, *extra: str) -> GridRun:
    """SAC on Hopper-v5's own reward with a recipe, 100k env steps: the RL side alone."""
    args = ("--reward", "env", "--sac-recipe", recipe, "--seed", str(seed), "--eval-every", "5000")
    return GridRun(name, (*HOPPER, *args, *extra), 100_000)


def run_after_steps(run: GridRun) -> None:
    """The run's `after` commands, once (marker `.after-done`); their output goes to the
    run's train.log."""
    marker = run.run_dir / ".after-done"
    if not run.after or marker.exists() or not finished_in(run, run.run_dir):
        return  # a run finished only in the archive has no weights here to record from
    with (run.run_dir / "train.log").open("ab") as log:
        for step in run.after:
            cmd = [sys.executable, "-m", "sd2ail_reward.cli"]
            cmd += [arg.format(run_dir=run.run_dir) for arg in step]
            print(f"{time.strftime('%H:%M:%S')} after {run.name}: {' '.join(cmd)}", flush=True)
            code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
            if code != 0:
                print(f"{run.name}: {step[:2]} exited {code}; not marked done", flush=True)
                return
    marker.touch()


def hopper_evidence() -> list[GridRun]:
    """Issue "Training explores again": the RL side alone on the true reward (2 recipes x 2
    seeds x 100k), then the paper's algorithm alone (SD2AIL 3 seeds, DiffAIL 2 seeds, 200k)."""
    controls = [
        true_reward_run(f"hopper-envreward-{recipe}-seed{seed}", recipe, seed)
        for seed in (0, 1)
        for recipe in ("reference", "expert")
    ]
    imitation = [("sd2ail", 0), ("sd2ail", 1), ("diffail", 0), ("sd2ail", 2), ("diffail", 1)]
    imitation_runs = [
        GridRun(
            f"hopper-{algo}-1demo-seed{seed}",
            (
                *HOPPER,
                "--algo",
                algo,
                "--seed",
                str(seed),
                "--eval-every",
                "5000",
                f"--server-arg=--updates-per-transition={DISC_RATIO}",
            ),
            200_000,
        )
        for algo, seed in imitation
    ]
    # the longest run first, so that one slot carries it while the other does the controls
    return [imitation_runs[0], *controls, *imitation_runs[1:]]


def hopper_recipe_check() -> list[GridRun]:
    """Why a recipe falls short of the true-reward ceiling. The expert recipe with the chunk
    our Hopper expert was trained with (64 env steps between update rounds, not 1,000: the
    policy that collects is at most 64 updates old). The reference recipe without its
    demo-normalised observations: with ONE deterministic demo some observation dims barely
    vary, so their z-scores explode on states the demo never visits (at 45k env steps the
    reference control scored ~120). The reference recipe with episodes that end on a fall:
    Hopper-v5 pays no healthy reward to a fallen robot, so in fixed-length episodes falling
    costs only the reward not earned. And SD2AIL with the expert recipe, the better of the two
    on the true reward (episodes end on a fall, so -log(1 - D) > 0 also pays for staying up,
    the survival bias the reference's fixed-length episodes avoid).

    Then what an audit of the reference code (positron-lpc/SD2AIL) found we do differently:
    its SAC (rlkit) initialises small output layers and adds 1e-3 (mean mu^2 + mean log
    sigma^2) to the actor loss (the true-reward control with both); its released Hopper config
    uses 4 demo trajectories; and it runs 1 discriminator update per env step, not 0.25 (the
    closest run to the reference we can afford: 1:1 with rlkit's SAC, ~4 h alone here)."""
    sd2ail_expert_recipe = hopper_expert_recipe()[0]  # the same run as that grid's
    rlkit = ("--sac-init", "rlkit", "--policy-reg", "0.001")
    return [
        true_reward_run("hopper-envreward-expert-chunk64-seed0", "expert", 0, "--chunk", "64"),
        true_reward_run(
            "hopper-envreward-reference-terminating-seed0", "reference", 0, "--no-fixed-length"
        ),
        sd2ail_expert_recipe,  # the telling one: before the raw-observation diagnostic
        true_reward_run("hopper-envreward-reference-rlkit-seed0", "reference", 0, *rlkit),
        sd2ail_run("hopper-sd2ail-4demo-seed0", 4, DISC_RATIO),
        sd2ail_run("hopper-sd2ail-1demo-paper-seed0", 1, "1.0", *rlkit),
        true_reward_run(
            "hopper-envreward-reference-rawobs-seed0", "reference", 0, "--no-normalize-obs"
        ),
    ]


def hopper_expert_recipe() -> list[GridRun]:
    """The paper's algorithm (no extra terms) with the `expert` SAC recipe, the one recipe that
    reaches ~2500 on Hopper's true reward in 100k steps here: its seed 0 reached the expert
    (3131 at 135k), so SD2AIL seeds 1-2 decide `make run` (>= 90% of the expert on 2 of 3
    seeds), and DiffAIL runs beside it with the same recipe, budget and ratio."""
    runs = [("sd2ail", 0), ("sd2ail", 1), ("diffail", 0), ("sd2ail", 2), ("diffail", 1)]
    return [
        GridRun(
            f"hopper-{algo}-1demo-expertrecipe-seed{seed}",
            (
                *HOPPER,
                *("--algo", algo, "--sac-recipe", "expert", "--seed", str(seed)),
                *("--eval-every", "5000", f"--server-arg=--updates-per-transition={DISC_RATIO}"),
            ),
            200_000,
        )
        for algo, seed in runs
    ]


def hopper_cost() -> list[GridRun]:
    """Issue "Training cost": `make run`'s command with the reward server's forwards in bf16
    (autocast) and train pinned to one core, the server to the other (14.4 against 25.3 ms
    per env step in float32, unpinned), seed 0, beside hopper-expert-recipe's float32 seed 0:
    this becomes `make run`'s setting only if its learning curve is no worse. Then `make run`
    with SAC's trunks in bf16 too (`--sac-dtype bfloat16`): on the evening VM of 2026-12-01
    SAC's update was most of `make run`'s env step (make_run_cost --alone: 1.59x, not 2x).
    It learned worse (2701 final, >= 2500 at 165k) and no faster: `make run` keeps it off."""
    base = hopper_expert_recipe()[0]
    server_bf16 = (*base.args, "--server-arg=--compute-dtype=bfloat16")
    return [
        GridRun(
            "hopper-sd2ail-1demo-expertrecipe-bf16-seed0", (*server_bf16, "--pin-cores"), base.steps
        ),
        GridRun(
            "hopper-sd2ail-1demo-expertrecipe-bf16-sacbf16-seed0",
            (*server_bf16, "--sac-dtype", "bfloat16"),
            base.steps,
        ),
    ]


def sd2ail_run(name: str, num_demos: int, ratio: str, *extra: str) -> GridRun:
    """SD2AIL on Hopper-v5 from `num_demos` demos, reference recipe, seed 0, 200k env steps."""
    demos = ["--num-demos", str(num_demos)]
    args = (*HOPPER[:-2], *demos, "--seed", "0", "--eval-every", "5000", *extra)
    return GridRun(name, (*args, f"--server-arg=--updates-per-transition={ratio}"), 200_000)


def pendulum_ablation() -> list[GridRun]:
    """Issue "Does SD2AIL beat its ablations": 6 algorithms x 5 seeds, 20k env steps, with the
    CI test's settings (`PENDULUM_CI_FLAGS`: one demo, store episode 6, a swing-up; smaller
    networks and batches than the paper's, the same for every algorithm)."""
    algos = ("sd2ail", "diffail", "pedr_only", "pseudo_only", "gail", "bc")
    return [
        GridRun(
            f"pendulum-{algo}-1demo-seed{seed}",
            (*PENDULUM_CI_FLAGS, "--algo", algo, "--seed", str(seed)),
            20_000,
        )
        for seed in range(5)
        for algo in algos
    ]


def pendulum_ci() -> list[GridRun]:
    """Calibration of the CI learning test (`tests/test_learning_pendulum.py`): its settings
    on 3 seeds over the whole budget, and the frozen-discriminator control."""
    runs = [
        GridRun(f"pendulum-ci-sd2ail-seed{seed}", (*PENDULUM_CI_FLAGS, "--seed", str(seed)), 15_000)
        for seed in (0, 1, 2)
    ]
    runs += [
        GridRun(
            f"pendulum-ci-frozen-seed{seed}",
            (*PENDULUM_CI_FLAGS, "--seed", str(seed), "--reward", "frozen"),
            8_000,
        )
        for seed in (0, 1, 2)
    ]
    return runs


def hopper_ablation() -> list[GridRun]:
    """Issue "Does SD2AIL beat its ablations", Hopper-v5 from one demo, with the `expert` SAC
    recipe of hopper-expert-recipe (the recipe `make run` uses: SD2AIL reached the expert with
    it): the full-trajectory protocol's GAIL (3 seeds), DiffAIL's third seed and BC (3 seeds)
    beside hopper-expert-recipe's SD2AIL and DiffAIL runs (the same recipe, budget and ratio,
    not run twice), and GAIL's subsampled protocol (every 20th pair of the trajectory: 50
    pairs) for SD2AIL, DiffAIL and BC. The subsampled seed 0 pair runs first: BC matches the
    expert from the full trajectory, so that protocol is where imitation can beat it. The
    subsampled protocol's imitation runs all use `make run`'s bf16 server where the CPU has
    native bf16 (1.5x less wall time, curve no worse: hopper-cost); the full protocol's stay
    float32, as the runs they sit beside."""
    bf16 = ("--server-arg=--compute-dtype=bfloat16",) if cpu_bf16_supported() else ()
    imitation = [
        ("sd2ail", 0, 20), ("diffail", 0, 20), ("gail", 0, 1), ("diffail", 2, 1),
        ("sd2ail", 1, 20), ("diffail", 1, 20), ("gail", 1, 1), ("gail", 2, 1),
    ]  # fmt: skip
    runs = [
        GridRun(
            f"hopper-{algo}-1demo{'' if every == 1 else f'-sub{every}'}-expertrecipe-seed{seed}",
            (
                *HOPPER,
                "--algo",
                algo,
                "--sac-recipe",
                "expert",
                "--seed",
                str(seed),
                "--eval-every",
                "5000",
                "--demo-subsample",
                str(every),
                f"--server-arg=--updates-per-transition={DISC_RATIO}",
                *(bf16 if every > 1 else ()),
            ),
            200_000,
        )
        for algo, seed, every in imitation
    ]
    runs += [
        GridRun(
            f"hopper-bc-1demo{'' if every == 1 else f'-sub{every}'}-seed{seed}",
            (*HOPPER, "--algo", "bc", "--seed", str(seed), "--demo-subsample", str(every)),
            200,  # epochs
        )
        for every, seeds in ((1, (0, 1, 2)), (20, (0, 1)))
        for seed in seeds
    ]
    return runs[8:] + runs[:8]  # the BC runs take minutes: first


EXPERT_TARGETS = {"HalfCheetah-v5": 5200.0, "Walker2d-v5": 4400.0, "Ant-v5": 5000.0}
"""Issue "The paper's other three tasks": floors 4000 / 4600 / 4000 for the mean of the 40
recorded episodes; training stops ~10% above, so the recorded episodes clear the floor.
HalfCheetah first: it never terminates early and SAC learns it fastest. Walker2d's was 4500
until its run, stopped at 600k, had hovered at 4050-4400 for 200k steps: its best actor
(4409 at 490k) falls 1 time in 41 and makes the store. Ant-v5's was 4500 until its best
actor (4504 at 390k, one evaluation of 10 episodes, std 514) fell in 3 of the first 11
episodes recorded (the store then allowed 2 in 42): it trained on toward 5000, and an
evaluation counts toward the target (and best_actor) only if none of its 10 episodes fell
(`--target-full-episodes`, every expert's run)."""
EXPERT_FLOORS = {"HalfCheetah-v5": 4600.0, "Walker2d-v5": 4000.0, "Ant-v5": 4000.0}
EXPERT_MAX_FALLEN = {"HalfCheetah-v5": 2, "Walker2d-v5": 2, "Ant-v5": 4}
"""Fallen episodes a store may leave out (each named, with its return, in the store's
provenance; the unfiltered mean beside the stored one). 2 (5%) for the planar walkers. Ant-v5
terminates whenever its torso leaves 0.2-1.0 m, and its 5000-level actor (510k, 10 of 10
evaluation episodes whole) fell in 3 of the 43 episodes it takes to store 40 whole ones
(unfiltered mean 4913, stored 5067): refused at 2, its allowance is 4 (10%)."""


def experts() -> list[GridRun]:
    """SAC experts on the true reward (the `expert` recipe, from scratch: no demos yet), up to
    1M env steps or their target return; then 40 deterministic episodes are recorded into
    `<run dir>/<env>.zarr` and verified by replay, ready to be copied to demos/ and committed.
    The issue asks for 40 x 1,000 steps: an episode that falls is left out and the next reset
    seed tried, at most `EXPERT_MAX_FALLEN` (5-10%), each named with its return in the
    store's provenance (more falls, or a mean below the floor, refuse the store). A refused
    expert trains on once its target here is raised (a started run resumes toward the grid's
    target). With no server, SAC's update is nearly all of an expert's cost, so on a CPU with
    native bf16 its trunks compute in bf16 (Ant-v5: 1.72x cheaper updates, 1.55x less wall
    time; the recorded episodes run the float32 actor). A run started earlier resumes with
    the arithmetic it started with (its config.json)."""
    sac_bf16 = ("--sac-dtype", "bfloat16") if cpu_bf16_supported() else ()
    return [
        GridRun(
            f"expert-{env}-seed0",
            (
                "--env",
                env,
                "--demos",
                "",
                "--reward",
                "env",
                "--sac-recipe",
                "expert",
                "--seed",
                "0",
                "--start-steps",
                "10000",
                "--eval-every",
                "10000",
                *sac_bf16,
            ),
            1_000_000,
            target,
            after=(
                (
                    "demos",
                    "record",
                    "--run-dir",
                    "{run_dir}",
                    "--out",
                    f"{{run_dir}}/{env}.zarr",
                    "--episodes",
                    "40",
                    "--min-return",
                    str(EXPERT_FLOORS[env]),
                    "--max-fallen",
                    str(EXPERT_MAX_FALLEN[env]),
                ),
                ("demos", "verify", f"{{run_dir}}/{env}.zarr"),
            ),
            full_episodes=True,
        )
        for env, target in EXPERT_TARGETS.items()
    ]


def new_tasks() -> list[GridRun]:
    """Issue "The paper's other three tasks": a first SD2AIL run from one demo per task, 100k
    env steps, with the `expert` recipe (the one that trained these experts on the true reward:
    HalfCheetah's reached 5252 in 90k) and the evidence grids' disc:SAC ratio. A task's run
    waits until its demo store is committed (the `experts` grid makes it)."""

    def run(env: str, algo: str) -> GridRun:
        demos = ("--env", env, "--demos", f"demos/{env}.zarr", "--num-demos", "1")
        if algo == "bc":
            return GridRun(
                f"{env.split('-')[0].lower()}-bc-1demo-seed0", (*demos, "--algo", "bc"), 200
            )
        return GridRun(
            f"{env.split('-')[0].lower()}-{algo}-1demo-expertrecipe-seed0",
            (
                *demos,
                *("--algo", algo, "--sac-recipe", "expert", "--seed", "0", "--eval-every", "5000"),
                f"--server-arg=--updates-per-transition={DISC_RATIO}",
            ),
            100_000,
        )

    # then, on HalfCheetah (where the first SD2AIL run learned), BC and DiffAIL beside it
    comparisons = [run("HalfCheetah-v5", "bc"), run("HalfCheetah-v5", "diffail")]
    # and SD2AIL with the discriminator on z-scored obs: on raw HalfCheetah obs (joint
    # velocities' std 5-15) the 10-step chain from N(0, I) made pseudo-experts farther from
    # the expert than random pairs (Frechet 656 vs 363)
    sd2ail = run("HalfCheetah-v5", "sd2ail")
    normalised = GridRun(
        sd2ail.name.replace("-seed0", "-discnorm-seed0"),
        (*sd2ail.args, "--server-arg=--normalize-obs"),
        sd2ail.steps,
    )
    return [*(run(env, "sd2ail") for env in EXPERT_TARGETS), *comparisons, normalised]


GRIDS = {
    "hopper-evidence": hopper_evidence,
    "hopper-recipe-check": hopper_recipe_check,
    "hopper-expert-recipe": hopper_expert_recipe,
    "hopper-cost": hopper_cost,
    "pendulum-ci": pendulum_ci,
    "pendulum-ablation": pendulum_ablation,
    "hopper-ablation": hopper_ablation,
    "experts": experts,
    "new-tasks": new_tasks,
}


ARCHIVE = REPO / "benchmarks" / "results" / "runs"
"""Where `benchmarks/runs_csv.py` archives each run's files (config, summary, metrics): the one
record of a run that survives a new machine, whose grid root starts empty."""


CARRY = REPO / "benchmarks" / "results" / "carry"
"""Runs too long for one machine (hours here) go on on the next from a carry committed here
(`grid.py carry`, run by `scripts/stop_runs.sh`): SAC's newest checkpoint with its replay
buffer cut to the newest `CARRY_TRANSITIONS`, the best actor, and for a run against a reward
server the server generation saved with that checkpoint, whole (Hopper, 100k steps: ~6 MB of
agent rows, plus the pseudo-experts' buffer for SD2AIL)."""
CARRY_TRANSITIONS = 10_000
"""Ten 1,000-step episodes: the resumed run samples from these until its buffer refills
(~5 MB a carry with the optimisers)."""
CARRY_RUN_FILES = ("config.json", "metrics.csv", "provenance.json", "timings.json")


def write_carries(runs: list[GridRun]) -> None:
    """A carry for each run started here and unfinished that trains SAC; a finished run's
    carry is removed (the run's archive holds its results)."""
    from agents.checkpoints import write_carry

    for run in runs:
        carry = CARRY / run.name
        if finished(run):
            if carry.exists():
                shutil.rmtree(carry)
                print(f"{run.name}: finished, its carry removed", flush=True)
            continue
        if not run.carried or not (run.run_dir / "checkpoints").exists():
            continue
        counters = write_carry(run.run_dir, carry, keep=CARRY_TRANSITIONS)
        size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file()) / 1e6
        print(f"{run.name}: carried at step {counters['env_step']} ({size:.1f} MB)", flush=True)


def restore_carry(run: GridRun) -> bool:
    """On a machine without the run: its run dir rebuilt from the archive and the carry, so
    that `train --resume` goes on from the carried step; the sitting is noted in its
    provenance (`carried_buffer`: the transitions it kept)."""
    from agents.checkpoints import read_carry
    from agents.run_files import write_json

    carry, archived = CARRY / run.name, ARCHIVE / run.name
    if (run.run_dir / "config.json").exists() or not (carry / "checkpoint.pt").exists():
        return False
    if not all((archived / name).exists() for name in CARRY_RUN_FILES[:2]):
        return False
    run.run_dir.mkdir(parents=True, exist_ok=True)
    for name in CARRY_RUN_FILES:
        if (archived / name).exists():
            shutil.copyfile(archived / name, run.run_dir / name)
    checkpoint = read_carry(carry, run.run_dir)
    provenance_path = run.run_dir / "provenance.json"
    provenance = json.loads(provenance_path.read_text()) if provenance_path.exists() else {}
    provenance.setdefault("carries", []).append(
        {"at_step": checkpoint.step, "carried_buffer": int(checkpoint.state["buffer"]["size"])}
    )
    write_json(provenance_path, provenance)
    print(f"{run.name}: goes on from its carry at step {checkpoint.step}", flush=True)
    return True


def finished_in(run: GridRun, run_files: Path) -> bool:
    """Whether the run whose config.json and summary.json lie in `run_files` reached the grid
    run's budget or target."""
    summary = run_files / "summary.json"
    if not summary.exists() or not (run_files / "config.json").exists():
        return False
    config = json.loads((run_files / "config.json").read_text())
    done = json.loads(summary.read_text())
    # best_actor_return: the evaluation that may stop the run (`--target-full-episodes`)
    if run.target is not None and done.get("best_actor_return", done["best_return"]) >= run.target:
        return True
    return config.get("algo") == "bc" or done["env_steps"] >= run.steps


def finished(run: GridRun) -> bool:
    """Finished here, or, where the grid root holds no such run (a new machine), finished in
    the repo's archive: a run that ended in an earlier sitting is not run again."""
    if (run.run_dir / "config.json").exists():
        return finished_in(run, run.run_dir)
    return finished_in(run, ARCHIVE / run.name)


def try_lock(run: GridRun) -> IO[str] | None:
    """An exclusive lock on the run, held while the returned file is open here or in the run's
    process (which inherits it, so a runner that dies leaves its running runs locked); None
    when another runner holds it."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    f = (run.run_dir / ".grid-lock").open("w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def rebuild_runs_csv() -> None:
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "runs_csv.py")], check=False)


def report_lost(run: GridRun) -> None:
    """Says so when a run archived part-way on another machine, with no carry, starts again."""
    archived = ARCHIVE / run.name / "summary.json"
    if not (run.run_dir / "config.json").exists() and archived.exists():
        steps = json.loads(archived.read_text())["env_steps"]
        print(f"{run.name}: its checkpoints are gone (archived at {steps:.0f} steps); "
              "it starts again from step 0", flush=True)  # fmt: skip


def start(run: GridRun, nice: int) -> tuple[subprocess.Popen[bytes], IO[str]] | None:
    """The run's train started under its lock (held by the process), or None when another
    runner holds it."""
    lock = try_lock(run)
    if lock is None:
        print(f"{run.name}: held by another runner, skipped", flush=True)
        return None
    if not restore_carry(run):
        report_lost(run)
    # a run trained on (its target raised) is recorded again when it ends
    (run.run_dir / ".after-done").unlink(missing_ok=True)
    cmd = run.command()
    print(f"{time.strftime('%H:%M:%S')} start {run.name}: {' '.join(cmd)}", flush=True)
    log = (run.run_dir / "train.log").open("ab")
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.nice(nice), pass_fds=(lock.fileno(),),
    )  # fmt: skip
    return proc, lock


def run_grid(
    runs: list[GridRun], parallel: int, nice: int, uncarried_start_by: float = float("inf")
) -> None:
    """Runs `runs` to the end, `parallel` at a time. After `uncarried_start_by` (time.time())
    runs that cannot be carried wait until nothing else is left to start: they may not end
    before the machine does, so a carried run takes the lane first; started late they go on
    (`--resume`) only if the next sitting gets this machine and its grid root, and cost
    nothing but an idle lane otherwise."""
    for run in runs:  # finished earlier, but a sitting ended before their after-steps
        lock = try_lock(run) if run.after and finished_in(run, run.run_dir) else None
        if lock is not None:
            with lock:
                run_after_steps(run)
    pending = [r for r in runs if not finished(r)]
    deferred: list[GridRun] = []
    waiting: list[GridRun] = []  # for a demo store: looked for again while the lane works
    active: list[tuple[GridRun, subprocess.Popen[bytes], IO[str]]] = []
    while True:
        ready = [r for r in waiting if r.missing_demos() is None]
        if ready:
            print(f"{time.strftime('%H:%M:%S')} demo store now there for: "
                  f"{', '.join(r.name for r in ready)}", flush=True)  # fmt: skip
            waiting = [r for r in waiting if r not in ready]
            pending = ready + pending
        if not (pending or active or deferred):
            break
        if deferred and not pending and len(active) < parallel:
            print(f"{time.strftime('%H:%M:%S')} nothing else to start: {len(deferred)} "
                  f"uncarried run(s) start late; they go on in the next sitting only on this "
                  f"machine ({GRID_ROOT})", flush=True)  # fmt: skip
            pending, deferred, uncarried_start_by = deferred, [], float("inf")
        while pending and len(active) < parallel:
            run = pending.pop(0)
            if run.missing_demos() is not None:
                print(f"{run.name}: waits for {run.missing_demos()}", flush=True)
                waiting.append(run)
                continue
            if not run.carried and time.time() > uncarried_start_by:
                print(f"{run.name}: too late in this sitting to end; starts once nothing "
                      "else is left", flush=True)  # fmt: skip
                deferred.append(run)
                continue
            started = start(run, nice)
            if started is not None:
                active.append((run, *started))
        time.sleep(5)
        for entry in list(active):
            run, proc, lock = entry
            if proc.poll() is None:
                continue
            print(f"{time.strftime('%H:%M:%S')} end {run.name}: exit {proc.returncode}", flush=True)
            if proc.returncode == 0:
                run_after_steps(run)
            active.remove(entry)
            lock.close()
            rebuild_runs_csv()
    for run in waiting:
        print(f"{run.name}: not started, {run.missing_demos()} is still missing", flush=True)


def status(runs: list[GridRun]) -> None:
    for run in runs:
        metrics = run.run_dir / "metrics.csv"
        if not metrics.exists():
            metrics = ARCHIVE / run.name / "metrics.csv"
        rows = metrics.read_text().splitlines()[1:] if metrics.exists() else []
        last = rows[-1].split(",")[:2] if rows else ["-", "-"]
        state = "done" if finished(run) else ("started" if rows else "pending")
        if state == "started" and not (run.run_dir / "config.json").exists():
            # archived part-way on another machine: it goes on from its carry, or from step 0
            state = "carried" if (CARRY / run.name).exists() else "lost"
        print(f"{run.name:45s} {state:8s} step {last[0]:>7s} return {last[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="start or resume the grid's unfinished runs")
    run_p.add_argument("grids", nargs="+", choices=sorted(GRIDS), metavar="GRID")
    run_p.add_argument("--parallel", type=int, default=2, help="runs at a time")
    run_p.add_argument("--nice", type=int, default=10, help="niceness of the runs")
    run_p.add_argument(
        "--only", nargs="+", metavar="PATTERN", help="only the runs whose names match (fnmatch)"
    )
    carry_p = sub.add_parser(
        "carry", help="commit-sized carries of the grids' long unfinished runs (session end)"
    )
    carry_p.add_argument("grids", nargs="*", metavar="GRID", help="default: every grid")
    run_p.add_argument(
        "--uncarried-start-within",
        type=float,
        default=float("inf"),
        metavar="MINUTES",
        help="start runs that cannot be carried to the next machine only this long after now",
    )
    status_p = sub.add_parser("status", help="where each run of the grid stands")
    status_p.add_argument("grid", choices=sorted(GRIDS))
    sub.add_parser("list", help="the grids and their runs")
    args = parser.parse_args()
    if args.command == "list":
        for name, make in GRIDS.items():
            print(f"{name}: {len(make())} runs")
    elif args.command == "carry":
        if unknown := sorted(set(args.grids) - set(GRIDS)):
            parser.error(f"unknown grids {unknown}; the grids: {sorted(GRIDS)}")
        runs = [run for grid in args.grids or GRIDS for run in GRIDS[grid]()]
        write_carries(list({run.name: run for run in runs}.values()))
    elif args.command == "status":
        status(GRIDS[args.grid]())
    else:
        runs = [run for grid in args.grids for run in GRIDS[grid]()]
        if args.only:
            runs = [r for r in runs if any(fnmatch.fnmatch(r.name, p) for p in args.only)]
        deadline = time.time() + 60 * args.uncarried_start_within
        run_grid(runs, args.parallel, args.nice, deadline)


if __name__ == "__main__":
    main()
