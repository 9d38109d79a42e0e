"""Shared fixtures: one torch thread (the CI machine has 2 cores) and small demo sets."""

from __future__ import annotations

import pytest
import torch

pytest_plugins = ["conftest_server"]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    torch.set_num_threads(1)
