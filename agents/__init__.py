"""Runnable scripts that use the `sd2ail_reward` library (experts, agents, baselines)."""
