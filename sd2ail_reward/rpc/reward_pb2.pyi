from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("env_id", "algo", "obs_dim", "act_dim", "model_version", "ready", "requires_next_obs", "max_request_rows", "max_message_bytes", "push_quota_rows_per_s", "updates_per_transition", "training", "server_version", "action_low", "action_high")
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    ALGO_FIELD_NUMBER: _ClassVar[int]
    OBS_DIM_FIELD_NUMBER: _ClassVar[int]
    ACT_DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_NEXT_OBS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PUSH_QUOTA_ROWS_PER_S_FIELD_NUMBER: _ClassVar[int]
    UPDATES_PER_TRANSITION_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_LOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_HIGH_FIELD_NUMBER: _ClassVar[int]
    env_id: str
    algo: str
    obs_dim: int
    act_dim: int
    model_version: int
    ready: bool
    requires_next_obs: bool
    max_request_rows: int
    max_message_bytes: int
    push_quota_rows_per_s: float
    updates_per_transition: float
    training: bool
    server_version: str
    action_low: _containers.RepeatedScalarFieldContainer[float]
    action_high: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, env_id: _Optional[str] = ..., algo: _Optional[str] = ..., obs_dim: _Optional[int] = ..., act_dim: _Optional[int] = ..., model_version: _Optional[int] = ..., ready: _Optional[bool] = ..., requires_next_obs: _Optional[bool] = ..., max_request_rows: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., push_quota_rows_per_s: _Optional[float] = ..., updates_per_transition: _Optional[float] = ..., training: _Optional[bool] = ..., server_version: _Optional[str] = ..., action_low: _Optional[_Iterable[float]] = ..., action_high: _Optional[_Iterable[float]] = ...) -> None: ...

class ComputeRewardRequest(_message.Message):
    __slots__ = ("obs", "action", "next_obs")
    OBS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NEXT_OBS_FIELD_NUMBER: _ClassVar[int]
    obs: Tensor
    action: Tensor
    next_obs: Tensor
    def __init__(self, obs: _Optional[_Union[Tensor, _Mapping]] = ..., action: _Optional[_Union[Tensor, _Mapping]] = ..., next_obs: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ComputeRewardResponse(_message.Message):
    __slots__ = ("reward", "model_version")
    REWARD_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    reward: Tensor
    model_version: int
    def __init__(self, reward: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[int] = ...) -> None: ...

class PushTransitionsRequest(_message.Message):
    __slots__ = ("obs", "action", "next_obs", "client_id", "sequence")
    OBS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NEXT_OBS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    obs: Tensor
    action: Tensor
    next_obs: Tensor
    client_id: str
    sequence: int
    def __init__(self, obs: _Optional[_Union[Tensor, _Mapping]] = ..., action: _Optional[_Union[Tensor, _Mapping]] = ..., next_obs: _Optional[_Union[Tensor, _Mapping]] = ..., client_id: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class PushTransitionsResponse(_message.Message):
    __slots__ = ("accepted_rows", "duplicate", "last_sequence", "total_pushed")
    ACCEPTED_ROWS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PUSHED_FIELD_NUMBER: _ClassVar[int]
    accepted_rows: int
    duplicate: bool
    last_sequence: int
    total_pushed: int
    def __init__(self, accepted_rows: _Optional[int] = ..., duplicate: _Optional[bool] = ..., last_sequence: _Optional[int] = ..., total_pushed: _Optional[int] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("timeout_ms",)
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    timeout_ms: int
    def __init__(self, timeout_ms: _Optional[int] = ...) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("model_version", "updates", "total_pushed")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PUSHED_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    updates: int
    total_pushed: int
    def __init__(self, model_version: _Optional[int] = ..., updates: _Optional[int] = ..., total_pushed: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HistogramBucket(_message.Message):
    __slots__ = ("lower", "upper", "count")
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    lower: int
    upper: int
    count: int
    def __init__(self, lower: _Optional[int] = ..., upper: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ServingStats(_message.Message):
    __slots__ = ("uptime_s", "reward_requests", "reward_rows", "push_requests", "push_rows", "duplicate_pushes", "batches", "batch_requests_histogram", "batch_rows_histogram", "mean_batch_requests", "mean_batch_rows", "queue_ms_mean", "queue_ms_p50", "queue_ms_p99", "compute_ms_mean", "compute_ms_p99", "errors_by_code", "expired_in_queue", "queue_depth", "model_version", "pending_updates", "rewards_per_s", "pushed_rows_per_s", "updates_per_s", "checkpoints_written", "last_checkpoint", "compute_ms_total", "queue_ms_total")
    class ErrorsByCodeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    REWARD_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REWARD_ROWS_FIELD_NUMBER: _ClassVar[int]
    PUSH_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PUSH_ROWS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_PUSHES_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    BATCH_REQUESTS_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_MEAN_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_P50_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_P99_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_MEAN_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_P99_FIELD_NUMBER: _ClassVar[int]
    ERRORS_BY_CODE_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_IN_QUEUE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PENDING_UPDATES_FIELD_NUMBER: _ClassVar[int]
    REWARDS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PUSHED_ROWS_PER_S_FIELD_NUMBER: _ClassVar[int]
    UPDATES_PER_S_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    uptime_s: float
    reward_requests: int
    reward_rows: int
    push_requests: int
    push_rows: int
    duplicate_pushes: int
    batches: int
    batch_requests_histogram: _containers.RepeatedCompositeFieldContainer[HistogramBucket]
    batch_rows_histogram: _containers.RepeatedCompositeFieldContainer[HistogramBucket]
    mean_batch_requests: float
    mean_batch_rows: float
    queue_ms_mean: float
    queue_ms_p50: float
    queue_ms_p99: float
    compute_ms_mean: float
    compute_ms_p99: float
    errors_by_code: _containers.ScalarMap[str, int]
    expired_in_queue: int
    queue_depth: int
    model_version: int
    pending_updates: int
    rewards_per_s: float
    pushed_rows_per_s: float
    updates_per_s: float
    checkpoints_written: int
    last_checkpoint: str
    compute_ms_total: float
    queue_ms_total: float
    def __init__(self, uptime_s: _Optional[float] = ..., reward_requests: _Optional[int] = ..., reward_rows: _Optional[int] = ..., push_requests: _Optional[int] = ..., push_rows: _Optional[int] = ..., duplicate_pushes: _Optional[int] = ..., batches: _Optional[int] = ..., batch_requests_histogram: _Optional[_Iterable[_Union[HistogramBucket, _Mapping]]] = ..., batch_rows_histogram: _Optional[_Iterable[_Union[HistogramBucket, _Mapping]]] = ..., mean_batch_requests: _Optional[float] = ..., mean_batch_rows: _Optional[float] = ..., queue_ms_mean: _Optional[float] = ..., queue_ms_p50: _Optional[float] = ..., queue_ms_p99: _Optional[float] = ..., compute_ms_mean: _Optional[float] = ..., compute_ms_p99: _Optional[float] = ..., errors_by_code: _Optional[_Mapping[str, int]] = ..., expired_in_queue: _Optional[int] = ..., queue_depth: _Optional[int] = ..., model_version: _Optional[int] = ..., pending_updates: _Optional[int] = ..., rewards_per_s: _Optional[float] = ..., pushed_rows_per_s: _Optional[float] = ..., updates_per_s: _Optional[float] = ..., checkpoints_written: _Optional[int] = ..., last_checkpoint: _Optional[str] = ..., compute_ms_total: _Optional[float] = ..., queue_ms_total: _Optional[float] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("learner", "serving")
    class LearnerEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    learner: _containers.ScalarMap[str, float]
    serving: ServingStats
    def __init__(self, learner: _Optional[_Mapping[str, float]] = ..., serving: _Optional[_Union[ServingStats, _Mapping]] = ...) -> None: ...

class SaveCheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SaveCheckpointResponse(_message.Message):
    __slots__ = ("generation", "step", "total_pushed")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PUSHED_FIELD_NUMBER: _ClassVar[int]
    generation: str
    step: int
    total_pushed: int
    def __init__(self, generation: _Optional[str] = ..., step: _Optional[int] = ..., total_pushed: _Optional[int] = ...) -> None: ...
