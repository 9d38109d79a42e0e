"""Why a request failed, in the server's own terms.

The batcher, the push ledger and the learner host raise these; only the servicer knows gRPC and
turns each into its status code, in one table (`servicer.STATUS`). A ValueError from validation
counts as `InvalidRequest` there as well.
"""

from __future__ import annotations

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "InternalError",
    "InvalidRequest",
    "NotReady",
    "Overloaded",
    "PreconditionFailed",
    "ServerError",
    "ShuttingDown",
]


class ServerError(Exception):
    """Base of the failures a client is told about; the message says what to change."""


class InvalidRequest(ServerError):
    """The request is malformed (the client must change it)."""


class Overloaded(ServerError):
    """Over a limit (queue full, push quota): back off and retry the same request."""


class PreconditionFailed(ServerError):
    """The server cannot do this in its present state (no checkpoint dir, training stopped)."""


class NotReady(PreconditionFailed):
    """Still loading or warming up, or failed to load."""


class ShuttingDown(ServerError):
    """Stopping: retry once the server is back (the only retryable failure)."""


class DeadlineExceeded(ServerError):
    """The call's deadline passed before the work was done."""


class Cancelled(ServerError):
    """The client went away while the request waited."""


class InternalError(ServerError):
    """A server-side fault already logged where it happened (any other exception is logged by
    the servicer)."""
