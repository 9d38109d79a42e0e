"""The learner host: one RewardLearner, the threads around it and what they promise.

* Loading (a loader thread, after the server binds): the learner from demos or a checkpoint,
  then a warm-up; the state goes LOADING -> READY (or FAILED) and `on_ready` is told.
* Publishing: rewards are scored with a `RewardModel` snapshot (a frozen copy of the weights)
  that the trainer replaces by reference, so a half-updated model is never served;
  `model_version` (= discriminator updates included) grows with every publish.
* The trainer thread is the only writer of the learner. Pushes are validated and turned into
  rows in the handlers, de-duplicated by the `PushLedger`, ingested by the trainer, which runs
  `disc_updates_per_transition` updates per pushed transition (the k-th pushed transition earns
  updates once k >= `min_agent_size`), publishing every `publish_every` updates and whenever it
  catches up. `sync` waits until the trainer has caught up with everything pushed before it.
* Checkpoints: a generation every `checkpoint_every` updates, on request and at shutdown, from
  `learner.state_dict()` plus the ledger's sequences, captured under the learner lock so that
  weights, buffers and sequences come from one moment.

No gRPC here: failures are `errors.ServerError`s, which the servicer maps to status codes.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sd2ail_reward.learner import RewardLearner, RewardModel
from sd2ail_reward.rpc import reward_pb2
from sd2ail_reward.server.batcher import Batcher, OnCancel, score
from sd2ail_reward.server.checkpoints import Captured, CheckpointKeeper, Saved
from sd2ail_reward.server.errors import (
    DeadlineExceeded,
    InvalidRequest,
    NotReady,
    PreconditionFailed,
    ShuttingDown,
)
from sd2ail_reward.server.loading import load_learner
from sd2ail_reward.server.metrics import ServingMetrics
from sd2ail_reward.server.options import LearnerSpec, ServeOptions
from sd2ail_reward.server.pushes import PushLedger, PushResult, check_client
from sd2ail_reward.server.threads import FairLock, torch_threads_here

__all__ = ["Dims", "LearnerHost", "State", "Synced"]

logger = logging.getLogger(__name__)
audit = logging.getLogger("sd2ail_reward.server.audit")


class State(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class Dims:
    """What GetInfo reports about the loaded learner."""

    obs_dim: int
    act_dim: int
    requires_next_obs: bool
    env_id: str
    algo: str
    updates_per_transition: float
    min_agent_size: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]

    @classmethod
    def of(cls, learner: RewardLearner) -> Dims:
        return cls(
            obs_dim=learner.obs_dim,
            act_dim=learner.act_dim,
            requires_next_obs=learner.requires_next_obs,
            env_id=learner.env_id,
            algo=learner.algo,
            updates_per_transition=float(learner.config.disc_updates_per_transition),
            min_agent_size=int(learner.config.min_agent_size),
            action_low=tuple(float(v) for v in learner.action_low),
            action_high=tuple(float(v) for v in learner.action_high),
        )


@dataclass(frozen=True)
class Synced:
    model_version: int
    updates: int
    total_pushed: int


class LearnerHost:
    """Hosts one learner for a server; see the module docstring. Start with `start()`."""

    def __init__(
        self,
        source: RewardLearner | LearnerSpec,
        options: ServeOptions,
        metrics: ServingMetrics,
        *,
        on_ready: Callable[[], None] = lambda: None,
    ) -> None:
        self.options = options
        self.metrics = metrics
        self._source = source
        self._on_ready = on_ready
        self.learner: RewardLearner | None = None
        self.dims: Dims | None = None
        self._model: RewardModel | None = None
        self._batcher: Batcher | None = None
        self._state = State.LOADING
        self._state_lock = threading.Lock()
        self._ready = threading.Event()
        self._load_error = self._train_error = ""
        self._lock = FairLock()  # the learner lock
        self._ledger = PushLedger(
            quota_rows_per_s=options.push_quota,
            quota_window_s=options.push_quota_window_s,
            max_clients=options.max_tracked_clients,
        )
        self._ingested_rows = 0  # rows handed to the learner
        self._synced_rows = 0  # rows whose updates are done and published
        self._sync_cond = threading.Condition()
        self._sync_waiters = 0  # Sync calls waiting now (the trainer's thread count follows)
        self._work = threading.Event()
        self._stop_trainer = threading.Event()
        self._stop_reporter = threading.Event()
        self._closed = False  # no RPC runs any more: sync waiters give up
        self._since_publish = 0
        self._seconds = {"train": 0.0, "publish": 0.0}  # the trainer's time, for GetStats
        self._threads: list[threading.Thread] = []
        self._checkpoints = CheckpointKeeper(options, metrics)
        self.torch_threads = torch.get_num_threads()  # the creating thread's, for every thread
        self._trainer_threads = self.torch_threads  # the trainer thread's own (OpenMP's is
        # per thread), switched to options.sync_torch_threads while a Sync waits
        self.updates_by_threads: Counter[int] = Counter()  # discriminator updates per count

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def load_error(self) -> str:
        return self._load_error

    @property
    def model(self) -> RewardModel:
        """The published model (NotReady before the first publish)."""
        model = self._model
        if model is None:
            raise NotReady("no model loaded yet")
        return model

    @property
    def model_version(self) -> int:
        """Version of the published model (0 before loading)."""
        model = self._model
        return 0 if model is None else model.version

    def queue_depth(self) -> int:
        return 0 if self._batcher is None else self._batcher.depth()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until READY (True) or loading failed / stopped / timeout (False)."""
        self._ready.wait(timeout_s)
        return self._state is State.READY

    def require(self) -> Dims:
        """Dims of a ready host, else the error for its state."""
        state = self._state
        if state is State.READY and self.dims is not None:
            return self.dims
        if state in (State.STOPPING, State.STOPPED):
            raise ShuttingDown("server is shutting down; retry once it is back")
        if state is State.FAILED:
            raise NotReady(f"server failed to load: {self._load_error}")
        raise NotReady(
            "server is still loading (health NOT_SERVING); wait until it is SERVING "
            "(RewardClient.wait_ready())"
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load the learner in the background (then train and report in two more threads)."""
        self._spawn(self._load, "sd2ail-loader")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        def run() -> None:
            torch_threads_here(self.torch_threads)
            target()

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _load(self) -> None:
        try:
            loaded = load_learner(self._source, self.options, self._checkpoints.store)
            self._install(loaded.learner, loaded.meta, loaded.demos)
            self._warm_up()
        except Exception as err:
            logger.exception("server failed to load")
            self._load_error = f"{type(err).__name__}: {err}"
            with self._state_lock:
                if self._state is State.LOADING:
                    self._state = State.FAILED
            self._ready.set()
            return
        with self._state_lock:
            if self._state is not State.LOADING:  # stopped while loading
                return
            self._state = State.READY
            self._on_ready()
        self._ready.set()
        d = self.dims
        assert d is not None
        logger.info(
            "serving %s (%s, obs %d, act %d) at model version %d; training %s",
            d.env_id,
            d.algo,
            d.obs_dim,
            d.act_dim,
            self.model_version,
            "on" if self.options.train else "off",
        )

    def _install(self, learner: RewardLearner, meta: dict[str, Any], demos: dict[str, Any]) -> None:
        self.dims = Dims.of(learner)
        self._checkpoints.demos = demos
        self._checkpoints.resumed(learner, meta)
        total = int(learner.agent.total_added)
        self._ledger.restore(meta.get("push_sequences", {}), total)
        self._ingested_rows = self._synced_rows = total
        self.learner = learner
        with self._lock:
            self._model = learner.snapshot()
        o = self.options
        self._batcher = Batcher(
            lambda: self.model,
            self.metrics,
            max_batch_rows=o.max_batch_rows,
            max_queue_delay_s=o.max_queue_delay_ms / 1e3,
            max_queue_size=o.max_queue_size,
        )
        self._spawn(self._trainer_loop, "sd2ail-trainer")
        self._spawn(self._reporter_loop, "sd2ail-reporter")

    def _warm_up(self) -> None:
        d = self.dims
        assert d is not None
        rng = np.random.default_rng(0)
        for n in self.options.warmup_rows:
            obs = rng.normal(size=(n, d.obs_dim)).astype(np.float32)
            act = rng.uniform(d.action_low, d.action_high, size=(n, d.act_dim)).astype(np.float32)
            score(self.model, self.model.rows(obs, act, obs))

    def begin_stop(self) -> State:
        """Refuse new work from now on; returns the state before (STOPPING or STOPPED: someone
        else is stopping the host already; READY: `stop` should checkpoint)."""
        with self._state_lock:
            previous = self._state
            if previous not in (State.STOPPING, State.STOPPED):
                self._state = State.STOPPING
        return previous

    def stop(self, *, checkpoint: bool) -> None:
        """After the RPCs are closed: stop the threads, then the final checkpoint."""
        self._closed = True
        with self._sync_cond:
            self._sync_cond.notify_all()
        if self._threads:
            self._threads[0].join(timeout=120.0)  # the loader: no thread starts after it ends
        if self._batcher is not None:
            self._batcher.close()
        self._stop_trainer.set()
        self._work.set()
        self._stop_reporter.set()
        for thread in self._threads[1:]:
            thread.join(timeout=60.0)
        if checkpoint:
            self._final_checkpoint()
        self._state = State.STOPPED
        self._ready.set()

    # ------------------------------------------------------------------ requests

    def reward(
        self,
        obs: np.ndarray,
        act: np.ndarray,
        next_obs: np.ndarray | None,
        *,
        timeout_s: float | None,
        on_cancel: OnCancel | None = None,
    ) -> tuple[np.ndarray, int]:
        """Rewards of an env-space batch and the model version that scored it."""
        self.require()
        model = self.model
        x = self._rows(model, obs, act, next_obs)
        if self.options.batching and self._batcher is not None:
            return self._batcher.submit(x, timeout_s, on_cancel)
        start = time.monotonic()
        out = score(model, x)
        self.metrics.batch([x.shape[0]], [0.0], (time.monotonic() - start) * 1e3)
        return out, model.version

    def push(
        self,
        client_id: str,
        sequence: int,
        obs: np.ndarray,
        act: np.ndarray,
        next_obs: np.ndarray | None,
    ) -> PushResult:
        """Accept agent transitions for training, once per (client_id, sequence)."""
        self.require()
        check_client(client_id, sequence)
        x = self._rows(self.model, obs, act, next_obs)  # a new array: no view of the request
        result = self._ledger.accept(client_id, sequence, x)
        if result.duplicate:
            self.metrics.duplicate()
            return result
        self.metrics.pushed(result.accepted_rows)
        audit.debug("push client=%s seq=%d rows=%d", client_id, sequence, result.accepted_rows)
        self._work.set()
        return result

    def _rows(
        self, model: RewardModel, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray | None
    ) -> np.ndarray:
        try:
            return model.rows(obs, act, next_obs, max_rows=self.options.max_request_rows)
        except ValueError as err:
            raise InvalidRequest(str(err)) from None

    def sync(self, timeout_s: float | None) -> Synced:
        """Wait until training has consumed every row accepted before the call, and published."""
        self.require()
        target = self._ledger.accepted
        with self._sync_cond:
            self._sync_waiters += 1
        try:
            return self._wait_synced(target, timeout_s)
        finally:
            with self._sync_cond:
                self._sync_waiters -= 1

    def _wait_synced(self, target: int, timeout_s: float | None) -> Synced:
        self._work.set()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._sync_cond:
            while self._synced_rows < target:
                self._check_training()
                if self._closed:
                    self.require()
                wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if wait <= 0:
                    raise DeadlineExceeded(
                        f"training had consumed {self._synced_rows} of {target} pushed "
                        "transitions when the deadline passed; call Sync again or give it "
                        "more time"
                    )
                self._sync_cond.wait(wait)
        self._check_training()
        learner = self.learner
        assert learner is not None
        return Synced(self.model_version, learner.n_updates, target)

    def _check_training(self) -> None:
        if self._train_error:
            raise PreconditionFailed(
                f"training stopped after an error ({self._train_error}); "
                "the server serves its last published model"
            )

    def stats(self) -> tuple[dict[str, float], reward_pb2.ServingStats]:
        """The learner's monitoring figures and the serving figures."""
        self.require()
        learner = self.learner
        assert learner is not None
        with self._lock:
            learner_stats = learner.stats()
            pending = self._owed_locked() if self.options.train else 0
            # where the server's time went since it started (a train run's cost, split)
            learner_stats.update({f"time/{k}_s": v for k, v in self._seconds.items()})
        learner_stats["time/reward_s"] = self.metrics.compute_ms_total / 1e3
        serving = self.metrics.message(self.queue_depth(), self.model_version, pending)
        return {k: float(v) for k, v in learner_stats.items()}, serving

    # ------------------------------------------------------------------ the trainer

    def _owed_locked(self) -> int:
        """Updates owed to pushed transitions (learner lock held)."""
        learner, d = self.learner, self.dims
        assert learner is not None and d is not None
        eligible = max(0, learner.agent.total_added - d.min_agent_size + 1)
        target = math.floor(eligible * d.updates_per_transition + 1e-9)
        return max(0, target - learner.n_updates)

    def _ingest_locked(self, pending: list[np.ndarray]) -> int:
        """Hand accepted rows to the learner (learner lock held); rows now ingested."""
        learner = self.learner
        assert learner is not None
        for x in pending:
            try:
                learner.add_agent_rows(x)
            except ValueError:  # made by RewardModel.rows in the handler; never expected
                logger.exception("dropping a push the learner refused")
            self._ingested_rows += x.shape[0]
        return self._ingested_rows

    def _publish_locked(self) -> None:
        assert self.learner is not None
        start = time.perf_counter()
        self._model = self.learner.snapshot()
        self._since_publish = 0
        self._seconds["publish"] += time.perf_counter() - start

    def _set_trainer_threads(self) -> None:
        """The Sync count while a client waits in Sync (its agent idles), else the server's."""
        want = self.torch_threads
        if self.options.sync_torch_threads and self._sync_waiters:
            want = self.options.sync_torch_threads
        if want != self._trainer_threads:
            torch.set_num_threads(want)
            self._trainer_threads = want

    def _train_one_locked(self) -> Captured | None:
        """One update if one is owed; returns a checkpoint capture when one is due."""
        learner = self.learner
        assert learner is not None
        self._set_trainer_threads()
        self.updates_by_threads[self._trainer_threads] += 1
        start = time.perf_counter()
        try:
            learner.train(1)
            self._seconds["train"] += time.perf_counter() - start
        except Exception as err:
            logger.exception("training stopped")
            self._train_error = f"{type(err).__name__}: {err}"
            return None
        self._since_publish += 1
        if self._since_publish >= self.options.publish_every:
            self._publish_locked()
        return self._capture_locked() if self._checkpoints.due(learner.n_updates) else None

    def _trainer_loop(self) -> None:
        """The only writer of the learner: ingest pushes, train, publish, checkpoint."""
        while not self._stop_trainer.is_set():
            self._work.clear()
            captured = None
            with self._lock:
                ingested = self._ingest_locked(self._ledger.take())
                learner = self.learner
                assert learner is not None
                updated = self.options.train and not self._train_error and self._owed_locked() > 0
                if updated:
                    before = learner.n_updates
                    captured = self._train_one_locked()
                    updated = learner.n_updates > before
                if not updated:
                    if self._since_publish:
                        self._publish_locked()
                    with self._sync_cond:
                        self._synced_rows = ingested
                        self._sync_cond.notify_all()
            if captured is not None:
                try:
                    self._checkpoints.write(captured)
                except Exception:  # e.g. a full disk: keep serving and training, say so
                    logger.exception("periodic checkpoint failed")
            if not updated:
                self._work.wait(0.5)

    # ------------------------------------------------------------------ checkpoints

    def _capture_locked(self) -> Captured:
        """Learner state + sequences at one moment (learner lock held)."""
        learner = self.learner
        assert learner is not None
        pending, sequences, accepted = self._ledger.take_with_state()
        self._ingest_locked(pending)
        return self._checkpoints.capture(learner, sequences, accepted)

    def save_checkpoint(self) -> Saved:
        """Write a generation now (PreconditionFailed without a checkpoint directory)."""
        self.require()
        return self._save()

    def _save(self) -> Saved:
        if self._checkpoints.store is None:
            raise PreconditionFailed(
                "this server has no --checkpoint-dir; restart it with one to save checkpoints"
            )
        with self._lock:
            captured = self._capture_locked()
        return self._checkpoints.write(captured)

    def _final_checkpoint(self) -> None:
        learner = self.learner
        if self._checkpoints.store is None or learner is None:
            return
        try:
            with self._lock:
                unchanged = self._checkpoints.unchanged(learner.n_updates, self._ledger.accepted)
            if unchanged:
                logger.info("no change since checkpoint %s", self.metrics.last_checkpoint)
                return
            logger.info("final checkpoint %s", self._save().generation)
        except Exception:
            logger.exception("final checkpoint failed")

    # ------------------------------------------------------------------ monitoring

    def _reporter_loop(self) -> None:
        every = self.options.log_every_s
        interval = every if every > 0 else 10.0
        while not self._stop_reporter.wait(interval):
            learner = self.learner
            if learner is None:
                continue
            dt, rates = self.metrics.interval(learner.n_updates)
            if every <= 0:
                continue
            with self._lock:
                stats = learner.stats()
                pending = self._owed_locked() if self.options.train else 0
            self.metrics.log(dt, rates, self.model_version, pending, stats)
