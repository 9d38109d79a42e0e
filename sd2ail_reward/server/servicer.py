"""The RPC handlers of `sd2ail.v1.RewardService`: decode, delegate to the learner host, encode.

Thin on purpose (as MLServer's servicers): tensors are decoded by `convert` (the wire format:
shape, byte length, row limit), transitions are validated once by the learner's `RewardModel.rows`
(inside the host), and every failure becomes a status code in one place, `STATUS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from sd2ail_reward.convert import TensorError, decode_matrix, to_tensor
from sd2ail_reward.rpc import reward_pb2, reward_pb2_grpc
from sd2ail_reward.server.errors import (
    Cancelled,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    NotReady,
    Overloaded,
    PreconditionFailed,
    ShuttingDown,
)
from sd2ail_reward.server.host import Dims, LearnerHost
from sd2ail_reward.server.options import package_version

__all__ = ["STATUS", "RewardServicer"]

logger = logging.getLogger(__name__)

STATUS: dict[type[Exception], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    TensorError: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.FAILED_PRECONDITION,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    InternalError: grpc.StatusCode.INTERNAL,
}
"""Every failure a handler can meet and the status code it answers (reward.proto's table);
anything else is a bug: logged, INTERNAL."""

_Request = TypeVar("_Request")
_Reply = TypeVar("_Reply")
_Handler = Callable[[Any, _Request, grpc.ServicerContext], _Reply]


def _status_of(err: Exception) -> grpc.StatusCode | None:
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return None


def _rpc(method: _Handler[_Request, _Reply]) -> _Handler[_Request, _Reply]:
    """Answer a handler's failure with its status code (see STATUS), counted in the metrics."""

    def handler(self: RewardServicer, request: _Request, context: grpc.ServicerContext) -> _Reply:
        try:
            return method(self, request, context)
        except Exception as err:
            code = _status_of(err)
            message = str(err)
            if code is None:
                logger.exception("%s failed", method.__name__)
                code, message = grpc.StatusCode.INTERNAL, f"internal error: {err!r}"
        self._host.metrics.error(code)
        context.abort(code, message)

    handler.__name__ = method.__name__
    handler.__doc__ = method.__doc__
    return handler


def _remaining(context: grpc.ServicerContext) -> float | None:
    """Seconds left before the call's deadline (None without one)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e8 else max(0.0, float(remaining))


def _transitions(
    request: reward_pb2.ComputeRewardRequest | reward_pb2.PushTransitionsRequest,
    dims: Dims,
    max_rows: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The request's tensors as arrays (TensorError when one is missing or malformed)."""

    def tensor(name: str, cols: int) -> np.ndarray:
        msg = getattr(request, name) if request.HasField(name) else None
        return decode_matrix(msg, name, cols, max_rows=max_rows)

    next_obs = tensor("next_obs", dims.obs_dim) if request.HasField("next_obs") else None
    return tensor("obs", dims.obs_dim), tensor("action", dims.act_dim), next_obs


class RewardServicer(reward_pb2_grpc.RewardServiceServicer):
    """RPC handlers: decode, delegate to the LearnerHost, encode."""

    def __init__(self, host: LearnerHost) -> None:
        self._host = host

    @_rpc
    def GetInfo(
        self, request: reward_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> reward_pb2.GetInfoResponse:
        h, o, d = self._host, self._host.options, self._host.dims
        return reward_pb2.GetInfoResponse(
            env_id=d.env_id if d else "",
            algo=d.algo if d else "",
            obs_dim=d.obs_dim if d else 0,
            act_dim=d.act_dim if d else 0,
            model_version=h.model_version,
            ready=h.state == "ready",
            requires_next_obs=d.requires_next_obs if d else False,
            max_request_rows=o.max_request_rows,
            max_message_bytes=o.max_message_bytes,
            push_quota_rows_per_s=o.push_quota,
            updates_per_transition=d.updates_per_transition if d else 0.0,
            training=o.train,
            server_version=package_version(),
            action_low=d.action_low if d else (),
            action_high=d.action_high if d else (),
        )

    @_rpc
    def ComputeReward(
        self, request: reward_pb2.ComputeRewardRequest, context: grpc.ServicerContext
    ) -> reward_pb2.ComputeRewardResponse:
        h = self._host
        obs, act, next_obs = _transitions(request, h.require(), h.options.max_request_rows)
        reward, version = h.reward(
            obs, act, next_obs, timeout_s=_remaining(context), on_cancel=context.add_callback
        )
        return reward_pb2.ComputeRewardResponse(reward=to_tensor(reward), model_version=version)

    @_rpc
    def PushTransitions(
        self, request: reward_pb2.PushTransitionsRequest, context: grpc.ServicerContext
    ) -> reward_pb2.PushTransitionsResponse:
        h = self._host
        obs, act, next_obs = _transitions(request, h.require(), h.options.max_request_rows)
        result = h.push(request.client_id, request.sequence, obs, act, next_obs)
        return reward_pb2.PushTransitionsResponse(
            accepted_rows=result.accepted_rows,
            duplicate=result.duplicate,
            last_sequence=result.last_sequence,
            total_pushed=result.total_pushed,
        )

    @_rpc
    def Sync(
        self, request: reward_pb2.SyncRequest, context: grpc.ServicerContext
    ) -> reward_pb2.SyncResponse:
        limits = [t for t in (_remaining(context), request.timeout_ms / 1e3 or None) if t]
        synced = self._host.sync(min(limits) if limits else None)
        return reward_pb2.SyncResponse(
            model_version=synced.model_version,
            updates=synced.updates,
            total_pushed=synced.total_pushed,
        )

    @_rpc
    def GetStats(
        self, request: reward_pb2.GetStatsRequest, context: grpc.ServicerContext
    ) -> reward_pb2.GetStatsResponse:
        learner, serving = self._host.stats()
        return reward_pb2.GetStatsResponse(learner=learner, serving=serving)

    @_rpc
    def SaveCheckpoint(
        self, request: reward_pb2.SaveCheckpointRequest, context: grpc.ServicerContext
    ) -> reward_pb2.SaveCheckpointResponse:
        saved = self._host.save_checkpoint()
        return reward_pb2.SaveCheckpointResponse(
            generation=saved.generation, step=saved.step, total_pushed=saved.total_pushed
        )
