"""The one-exp Mish agrees with torch's to float rounding, in value, first and second
derivative (the gradient penalty differentiates through it twice), on CPU float32/64."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sd2ail_reward.mish import Mish, mish, mish_


def wide(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.cat([torch.linspace(-120, 120, 48_001, dtype=dtype), torch.tensor([0.0, -0.0])])


def test_values_match_torch_mish_including_extremes() -> None:
    x = wide()
    torch.testing.assert_close(mish(x), F.mish(x), rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(mish_(x.clone()), F.mish(x), rtol=1e-6, atol=2e-6)
    x64 = wide(torch.float64)
    torch.testing.assert_close(mish(x64), F.mish(x64), rtol=1e-12, atol=1e-12)
    big = torch.tensor([1e4, 3e38, -3e38])
    assert torch.equal(mish(big), F.mish(big))  # exp overflow gives exactly x (and -0 / 0)


def test_first_and_second_derivatives_match_torch() -> None:
    x = torch.randn(4096, dtype=torch.float64) * 6
    x = torch.cat([x, torch.tensor([-80.0, -30.0, 0.0, 30.0, 80.0], dtype=torch.float64)])
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    (g_ours,) = torch.autograd.grad(mish(ours).sum(), ours, create_graph=True)
    (g_theirs,) = torch.autograd.grad(F.mish(theirs).sum(), theirs, create_graph=True)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)
    (gg_ours,) = torch.autograd.grad(g_ours.sum(), ours)
    (gg_theirs,) = torch.autograd.grad(g_theirs.sum(), theirs)
    torch.testing.assert_close(gg_ours, gg_theirs, rtol=1e-8, atol=1e-10)
    # the first-order path (no create_graph) is torch's own kernel
    x32 = wide().requires_grad_()
    mish(x32).sum().backward()
    ref = wide().requires_grad_()
    F.mish(ref).sum().backward()
    assert x32.grad is not None and torch.equal(x32.grad, ref.grad)
    assert torch.autograd.gradgradcheck(
        mish, (torch.randn(6, 5, dtype=torch.float64, requires_grad=True),)
    )


def test_module_is_a_drop_in_with_no_state() -> None:
    assert Mish().state_dict() == {}
    x = torch.randn(8, 3)
    torch.testing.assert_close(Mish()(x), torch.nn.Mish()(x), rtol=1e-6, atol=2e-6)
