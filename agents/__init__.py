"""The agent side: ONE Tianshou SAC training loop for every reward source, and what it needs.

It uses the `sd2ail_reward` library (the reward server, client and wrapper); the library never
imports this package or Tianshou.

    train.py         `sd2ail-reward train`: the run directory, resume, the local reward server
    recipes.py       the flags (`TrainArgs`) and SAC recipes (`reference`, `expert`)
    loop.py          the loop: collect (sampled actions), SAC updates, Sync, evaluate, save
    sac.py           SAC as the loop builds it: relabelling, actor hold and cloning term
    networks.py      actor and critics, optionally on demo-normalised observations
    evaluation.py    deterministic episodes on the env's TRUE reward, distance, figure
    diagnostics.py   learned vs true reward, critic vs realised return (critic_check.py)
    checkpoints.py   SAC + replay buffer as `CheckpointStore` generations
    run_files.py     metrics.csv, summary.json, atomic JSON
    local_server.py  the run's own reward server, waiting for its discriminator
    actors.py        saved actors and the deterministic policy demos are recorded with
    cloning.py, bc.py   behaviour cloning: the BC baseline and a BC start
    expert.py        `sd2ail-reward demos record`: an expert run's episodes into a demo store
    stats.py         bootstrap intervals and probability of improvement over seeds
    minimal_sac.py, remote_example.py, sb3_example.py, ray_workers.py, ray_actor.py
                     the same reward from other agents and processes (not the loop)
    plot.py          `sd2ail-reward plot`: curves of runs, PCA of pseudo-experts
"""
