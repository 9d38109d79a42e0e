"""`train --algo bc`: the behaviour-cloning baseline, the same actor regressed onto the demos."""

from __future__ import annotations

import logging
import time

import torch
from tianshou.data import Collector, CollectStats

from agents.checkpoints import TrainState
from agents.cloning import behaviour_cloning
from agents.evaluation import evaluate, make_eval_envs, mean_travelled, write_learning_curve
from agents.networks import box_spaces, policy_obs_stats
from agents.recipes import TrainArgs
from agents.run_files import BC_METRICS, append_metrics, summarize
from agents.sac import make_sac
from sd2ail_reward.demos import DemoSet

log = logging.getLogger("sd2ail.train")


def train_bc(args: TrainArgs, demos: DemoSet, expert: float) -> dict[str, float]:
    """Behaviour cloning baseline: the same actor, regressed onto the demo actions."""
    run_dir = args.run_path
    obs_space, act_space = box_spaces(args.env)
    algorithm = make_sac(args, obs_space, act_space, None, policy_obs_stats(args, demos))
    actor = algorithm.policy.actor
    test_envs, trackers = make_eval_envs(args)
    collector = Collector[CollectStats](algorithm, test_envs)
    state, start = TrainState(), time.time()
    for epoch in behaviour_cloning(actor, demos, act_space, args.bc_epochs, args.seed):
        if epoch % max(1, args.bc_epochs // 10) == 0 or epoch == args.bc_epochs:
            returns = evaluate(collector, test_envs, 10_000 + epoch).returns
            if state.best_return is None or returns.mean() > state.best_return:
                state.best_return, state.best_step = float(returns.mean()), epoch
                torch.save(actor.state_dict(), run_dir / "best_actor.pt")
            append_metrics(
                run_dir / "metrics.csv",
                {
                    "env_step": epoch,
                    "eval_return_mean": float(returns.mean()),
                    "eval_return_std": float(returns.std()),
                    "eval_x_travelled": mean_travelled(trackers),
                    "wall_time": time.time() - start,
                },
                BC_METRICS,
            )
    write_learning_curve(run_dir, expert, f"bc on {args.env} (x: epochs)")
    state.env_step = args.bc_epochs
    return summarize(run_dir, expert, state)
