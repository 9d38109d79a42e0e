"""The gRPC reward server: one RewardLearner behind `sd2ail.v1.RewardService`.

The only part of the library with threads. One job per module, read top down:

    options.py    ServeOptions, LearnerSpec and the checks that refuse unsafe settings
    lifecycle.py  RewardServer: bind, health, start, graceful stop; build_server, serve
    servicer.py   the RPC handlers: decode, delegate to the host, map errors to status codes
    host.py       LearnerHost: the learner, its loader / trainer / reporter threads, publishing,
                  pushes, sync and checkpoints
    loading.py    building or resuming the learner from demos and checkpoints
    pushes.py     push idempotency per (client_id, sequence) and per-client quotas
    batcher.py    dynamic batching of reward requests
    auth.py       token file and the bearer-token interceptor
    metrics.py    serving counters for GetStats and the log
    errors.py     why a request failed, in the server's terms (mapped to codes by the servicer)

Names are imported on first use, so `import sd2ail_reward.server.options` (or the token file
parser) does not load torch or start anything.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "LearnerSpec",
    "RewardServer",
    "ServeOptions",
    "TokenFileError",
    "build_server",
    "is_loopback",
    "load_tokens",
    "resolve_device",
    "serve",
]

_HOME = {
    "LearnerSpec": "options",
    "ServeOptions": "options",
    "is_loopback": "options",
    "resolve_device": "options",
    "TokenFileError": "auth",
    "load_tokens": "auth",
    "RewardServer": "lifecycle",
    "build_server": "lifecycle",
    "serve": "lifecycle",
}

if TYPE_CHECKING:
    from sd2ail_reward.server.auth import TokenFileError, load_tokens
    from sd2ail_reward.server.lifecycle import RewardServer, build_server, serve
    from sd2ail_reward.server.options import (
        LearnerSpec,
        ServeOptions,
        is_loopback,
        resolve_device,
    )


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
