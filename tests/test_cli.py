"""The command line maps onto the dataclasses it configures, with their defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sd2ail_reward.cli import build_parser, serve_options
from sd2ail_reward.server import ServeOptions

NOT_ON_THE_COMMAND_LINE = {
    "warmup_rows": "batch sizes scored once before SERVING: an implementation detail",
}


def parse_serve(*flags: str) -> ServeOptions:
    return serve_options(build_parser().parse_args(["serve", "--demos", "d.zarr", *flags]))


def test_serve_defaults_are_the_dataclass_defaults() -> None:
    assert parse_serve() == ServeOptions()


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(ServeOptions)])
def test_every_serve_option_is_reachable_from_the_command_line(field: str) -> None:
    """Each field is set by some flag (a changed value arrives), or is listed, with why, as
    not a command-line choice."""
    if field in NOT_ON_THE_COMMAND_LINE:
        return
    flags = {
        "host": ["--host", "0.0.0.0"], "port": ["--port", "50051"], "batching": ["--no-batching"],
        "max_batch_rows": ["--max-batch", "7"], "max_queue_delay_ms": ["--max-delay-ms", "2"],
        "max_queue_size": ["--queue-size", "9"], "max_request_rows": ["--max-request-rows", "5"],
        "max_message_bytes": ["--max-message-mb", "1"], "workers": ["--workers", "3"],
        "token_file": ["--token-file", "t"], "tls_cert": ["--tls-cert", "c"],
        "tls_key": ["--tls-key", "k"], "tls_client_ca": ["--tls-client-ca", "a"],
        "allow_insecure_remote": ["--allow-insecure-remote"], "reflection": ["--reflection"],
        "train": ["--no-train"], "publish_every": ["--publish-every", "4"],
        "checkpoint_dir": ["--checkpoint-dir", "ck"],
        "checkpoint_every": ["--checkpoint-every", "0"],
        "max_concurrent_rpcs": ["--max-concurrent-rpcs", "8"],
        "max_tracked_clients": ["--max-tracked-clients", "10"],
        "keep_checkpoints": ["--keep-checkpoints", "5"], "resume": ["--resume"],
        "resume_generation": ["--resume-from", "gen-000000001"],
        "push_quota": ["--push-quota", "100"], "push_quota_window_s": ["--push-quota-window", "2"],
        "log_every_s": ["--log-every", "3"], "grace_s": ["--grace", "1"],
    }  # fmt: skip
    assert field in flags, f"ServeOptions.{field} has no command-line flag"
    default, given = ServeOptions(), parse_serve(*flags[field])
    assert getattr(given, field) != getattr(default, field)
    changed = [
        f.name
        for f in dataclasses.fields(ServeOptions)
        if getattr(given, f.name) != getattr(default, f.name)
    ]
    assert changed == [field]
    if isinstance(getattr(given, field), Path):
        assert str(getattr(given, field)) == flags[field][-1]
