"""Mish, x tanh(softplus(x)), with a forward in fewer elementwise passes than torch's CPU kernel.

On CPU torch's Mish costs about as much as the Linear layers around it in the denoiser (a third
of a Hopper discriminator update, profiled). With e = exp(x) and d = (e + 1)^2 + 1,
tanh(log(1 + e)) = 1 - 2 / d, so mish(x) = x - 2 (x / d): one exp, no log1p or tanh, no clamp
(a large x gives e = inf, d = inf and exactly x; forming x / d first keeps 2 x from
overflowing). Values agree with `torch.nn.functional.mish` to float32 rounding (absolute error
~1e-6 at |x| ~ 10). The first-order backward is torch's own kernel; CUDA and float16 keep
torch's Mish entirely. bfloat16 on the CPU (the discriminator's `compute_dtype` option) uses the
formula too: torch's bf16 CPU kernel is ~3x slower than it, and the formula's value is within
one bf16 ulp of the exact one (torch's: half an ulp), below what the bf16 matmuls around it keep.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _uses_formula(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.bfloat16)


def _exp_and_d(x: Tensor) -> tuple[Tensor, Tensor]:
    e = torch.exp(x)
    d = (e + 1.0).square_().add_(1.0)
    return e, d


def _formula(x: Tensor, out: Tensor | None = None) -> Tensor:
    """x - 2 (x / d), into `out` when given (which may be x itself)."""
    _, d = _exp_and_d(x)
    x_over_d = torch.div(x, d, out=d)
    if out is None:
        return torch.add(x, x_over_d, alpha=-2.0)
    return torch.add(x, x_over_d, alpha=-2.0, out=out)


def _slope(x: Tensor) -> Tensor:
    """mish'(x) = 1 - 2 / d + 4 x e (e + 1) / d^2 in torch ops (so differentiable); x is
    clamped where the slope is 1 to float precision, so that inf / inf never happens."""
    e, d = _exp_and_d(x.clamp(max=30.0))
    return 1.0 - 2.0 / d + 4.0 * x * e * (e + 1.0) / (d * d)


class _MishFunction(torch.autograd.Function):
    """First-order backward is torch's `mish_backward`; under create_graph (the
    discriminator's gradient penalty) it is written in torch ops of the saved input, so that
    it is itself differentiable."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return _formula(x)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return grad_out * _slope(x)
        return torch.ops.aten.mish_backward(grad_out, x)


def mish(x: Tensor) -> Tensor:
    """Mish of `x` (differentiable to second order)."""
    if not _uses_formula(x):
        return F.mish(x)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _formula(x)
    return cast(Tensor, _MishFunction.apply(x))


def mish_(x: Tensor) -> Tensor:
    """Mish of `x` in place, for scoring under no_grad / inference_mode."""
    if not _uses_formula(x):
        return F.mish(x, inplace=True)
    return _formula(x, out=x)


class Mish(nn.Module):
    """Drop-in for `torch.nn.Mish` (no parameters, so state dicts are unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        return mish(x)
