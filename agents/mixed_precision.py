"""SAC's hidden layers in bf16 (`train --sac-dtype bfloat16`), on CPUs with native bf16.

SAC's update is mostly the matmuls of 256-wide hidden layers (benchmarks/README.md, "Training
cost"), which bf16 autocast runs ~1.6x faster on this CPU. Only the trunks (the actor's and
the critics' hidden MLPs, `.preprocess`) run under autocast, and their features return to
float32: the heads (Q, mean, log sigma), the losses, the TD targets, the entropy term and
Adam's master weights stay float32. A bf16 Q would be rounded to 8 bits of mantissa (a Q of
300 in steps of 2, against TD errors of a few units)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from tianshou.utils.net.continuous import ContinuousActorProbabilistic, ContinuousCritic


def sac_trunks(algorithm: torch.nn.Module) -> list[torch.nn.Module]:
    """The hidden MLPs of every actor and critic in `algorithm`, its lagged copies included."""
    trunks: dict[int, torch.nn.Module] = {}
    for module in algorithm.modules():
        if isinstance(module, ContinuousActorProbabilistic | ContinuousCritic):
            trunks[id(module.preprocess)] = module.preprocess
    return list(trunks.values())


def _to_float32(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.float()
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (output[0].float(), *output[1:])
    return output


@contextmanager
def bf16_trunks(algorithm: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """While inside, `algorithm`'s trunks compute under CPU bf16 autocast and hand float32
    features to their heads; outside (collection, evaluation, saved actors) nothing changes.
    Autograd records the casts, so backward needs no context."""
    if not enabled:
        yield
        return
    active: list[AbstractContextManager[Any]] = []

    def enter(module: torch.nn.Module, args: Any) -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        autocast.__enter__()
        active.append(autocast)

    def leave(module: torch.nn.Module, args: Any, output: Any) -> Any:
        active.pop().__exit__(None, None, None)
        return _to_float32(output)

    handles = []
    for trunk in sac_trunks(algorithm):
        handles.append(trunk.register_forward_pre_hook(enter))
        handles.append(trunk.register_forward_hook(leave, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
