"""Two things every server thread needs: the server's torch thread count, and a fair lock."""

from __future__ import annotations

import threading

import torch

__all__ = ["FairLock", "torch_threads_here"]


def torch_threads_here(num_threads: int) -> None:
    """Give the calling thread the server's torch thread count.

    OpenMP's thread count is per thread: `torch.set_num_threads` in the main thread does not
    reach threads started later (gRPC handler threads, the trainer), whose OpenMP and MKL calls
    then use one thread per core while `torch.get_num_threads()` still reports the main
    thread's value. On a busy 2-core machine that made a batch-1 reward in a handler thread
    15 to 28 ms instead of 0.5 ms (measured; the OpenMP workers spin and futex-wait against
    the handler, the other process and the GIL). Every thread that runs torch calls this first.
    """
    torch.set_num_threads(num_threads)


class FairLock:
    """A FIFO (ticket) lock: the trainer re-acquires it after every update, and a plain Lock
    would let it starve checkpoint and stats callers."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._cond:
            ticket = self._next
            self._next += 1
            while ticket != self._serving:
                self._cond.wait()

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()
