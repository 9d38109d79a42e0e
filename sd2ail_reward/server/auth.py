"""Tokens: the token file and the interceptor that checks `authorization: Bearer <token>`.

Read tokens may score and read stats; write tokens may also push, sync and checkpoint (pushes
train the discriminator that rewards every agent, so they need the stronger right). Tokens are
compared with `hmac.compare_digest`, against every token, so timing says nothing about them.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import grpc

from sd2ail_reward.rpc import SERVICE_NAME

__all__ = [
    "MIN_TOKEN_CHARS",
    "ROLES",
    "WRITE_METHODS",
    "AuthInterceptor",
    "Role",
    "TokenFileError",
    "load_tokens",
]

logger = logging.getLogger(__name__)

Role = Literal["read", "write"]
ROLES: tuple[Role, ...] = ("read", "write")
WRITE_METHODS = frozenset(
    f"/{SERVICE_NAME}/{name}" for name in ("PushTransitions", "Sync", "SaveCheckpoint")
)
"""RPCs a read-only token may not call."""
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
MIN_TOKEN_CHARS = 16


class TokenFileError(ValueError):
    """The token file is missing, malformed or unsafe."""


def load_tokens(path: str | os.PathLike[str]) -> dict[str, Role]:
    """Parse a token file: one ``<role> <token>`` per line, role ``read`` or ``write``.

    ``read`` tokens may call GetInfo, ComputeReward and GetStats; ``write`` tokens may call
    everything. Blank lines and lines starting with ``#`` are ignored. Tokens are at least 16
    printable ASCII characters without spaces (e.g. ``python -c "import secrets;
    print(secrets.token_urlsafe(32))"``). Clients send ``authorization: Bearer <token>``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except FileNotFoundError:
        raise TokenFileError(f"token file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TokenFileError(f"token file {p} is unreadable or not ASCII: {err}") from err
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("token file %s is readable by group/others; chmod 600 it", p)
    tokens: dict[str, Role] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ROLES:
            raise TokenFileError(
                f"{p}:{lineno}: expected '<role> <token>' with role read or write, "
                f"got {len(parts)} field(s) starting {parts[0]!r}"
            )
        role, token = parts[0], parts[1]
        if len(token) < MIN_TOKEN_CHARS or not token.isprintable():
            raise TokenFileError(
                f"{p}:{lineno}: token must be >= {MIN_TOKEN_CHARS} printable characters"
            )
        if token in tokens:
            raise TokenFileError(f"{p}:{lineno}: token listed twice")
        tokens[token] = "write" if role == "write" else "read"
    if not tokens:
        raise TokenFileError(f"token file {p} holds no tokens")
    return tokens


def _abort_handler(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that only answers `code`."""

    def deny(_request: object, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class AuthInterceptor(grpc.ServerInterceptor):
    """`authorization: Bearer <token>` on every RPC but health checks; write role for writes.

    `on_error` is told the status code of every refusal (for the error counters)."""

    def __init__(self, tokens: dict[str, Role], on_error: Callable[[grpc.StatusCode], None]):
        self._tokens = [(t.encode(), role) for t, role in tokens.items()]
        self._on_error = on_error

    def _role(self, metadata: Any) -> Role | None:
        presented = b""
        for key, value in metadata or ():
            if key == "authorization":
                text = value if isinstance(value, str) else value.decode("latin-1")
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer":
                    presented = token.strip().encode("utf-8", "replace")
        role: Role | None = None
        for token, token_role in self._tokens:  # compare with every token: no early exit
            if hmac.compare_digest(presented, token):
                role = token_role
        return role

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        method = details.method
        if handler is None or method.startswith(_HEALTH_PREFIX):
            return handler
        role = self._role(details.invocation_metadata)
        if role is None:
            self._on_error(grpc.StatusCode.UNAUTHENTICATED)
            return _abort_handler(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown token: send metadata 'authorization: Bearer <token>' with "
                "a token from the server's --token-file (RewardClient(token=...))",
            )
        if role != "write" and method in WRITE_METHODS:
            self._on_error(grpc.StatusCode.PERMISSION_DENIED)
            return _abort_handler(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method.rsplit('/', 1)[-1]} needs a token with the 'write' role; this token "
                "is 'read' (it may call GetInfo, ComputeReward and GetStats)",
            )
        return handler
