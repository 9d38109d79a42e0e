"""The command line maps onto the dataclasses it configures, with their defaults."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from pathlib import Path

import pytest

from sd2ail_reward.serve_cli import LearnerFlags, learner_config, parse_serve_args
from sd2ail_reward.server import ServeOptions

NOT_ON_THE_COMMAND_LINE = {
    "warmup_rows": "batch sizes scored once before SERVING: an implementation detail",
}


def parse_serve(*flags: str) -> ServeOptions:
    return parse_serve_args(["--demos", "d.zarr", *flags]).server


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


def parse_train(*flags: str) -> object:
    from agents.recipes import parse_train_args

    return parse_train_args(flags)


def test_train_defaults_are_the_dataclass_defaults() -> None:
    from agents.recipes import TrainArgs

    assert parse_train() == TrainArgs()


TRAIN_FLAGS = {
    "env": ["--env", "Walker2d-v5"], "demos": ["--demos", "x.zarr"],
    "num_demos": ["--num-demos", "3"], "demo_episodes": ["--demo-episodes", "4", "5"],
    "demo_subsample": ["--demo-subsample", "20"], "algo": ["--algo", "gail"],
    "steps": ["--steps", "5"], "seed": ["--seed", "3"], "server": ["--server", "h:1"],
    "token": ["--token", "t"], "run_dir": ["--run-dir", "r"], "resume": ["--resume"],
    "relabel": ["--no-relabel"], "relabel_prefetch": ["--no-relabel-prefetch"],
    "overlap": ["--no-overlap"], "reward": ["--reward", "env"],
    "eval_every": ["--eval-every", "7"], "eval_episodes": ["--eval-episodes", "2"],
    "target_return": ["--target-return", "1"], "start_steps": ["--start-steps", "9"],
    "chunk": ["--chunk", "11"], "batch_size": ["--batch-size", "13"],
    "buffer_size": ["--buffer-size", "17"], "hidden_sizes": ["--hidden-sizes", "8"],
    "sac_recipe": ["--sac-recipe", "expert"], "lr": ["--lr", "0.5"],
    "adam_beta1": ["--adam-beta1", "0.5"], "gamma": ["--gamma", "0.5"],
    "tau": ["--tau", "0.5"], "alpha": ["--alpha", "0.5"],
    "target_entropy": ["--target-entropy", "-2"], "fixed_length": ["--no-fixed-length"],
    "normalize_obs": ["--normalize-obs"], "bc_epochs": ["--bc-epochs", "3"],
    "bc_init_epochs": ["--bc-init-epochs", "3"],
    "actor_hold_updates": ["--actor-hold-updates", "3"],
    "bc_weight": ["--bc-weight", "0.5"], "critic_layer_norm": ["--critic-layer-norm"],
    "server_args": ["--server-arg=--hidden-dim=8"], "progress": ["--no-progress"],
}  # fmt: skip
"""One flag per TrainArgs field. --sac-recipe also sets the recipe's fields it does not
override (lr, beta1, alpha, fixed length), so it is checked apart."""


def test_every_train_field_is_reachable_from_the_command_line() -> None:
    from agents.recipes import TrainArgs

    default = TrainArgs()
    assert set(TRAIN_FLAGS) == {f.name for f in dataclasses.fields(TrainArgs)}
    for field, flags in TRAIN_FLAGS.items():
        given = parse_train(*flags)
        changed = {
            f.name
            for f in dataclasses.fields(TrainArgs)
            if getattr(given, f.name) != getattr(default, f.name)
        }
        if field == "sac_recipe":
            assert changed == {"sac_recipe", "lr", "adam_beta1", "alpha", "fixed_length"}
        else:
            assert changed == {field}, (field, changed)


LEARNER_FLAGS = {
    "algo": ["--algo", "gail"], "preset": ["--preset", "pendulum"], "seed": ["--seed", "3"],
    "device": ["--device", "cpu"], "hidden_dim": ["--hidden-dim", "8"], "lr": ["--lr", "0.5"],
    "expert_batch": ["--expert-batch", "7"], "agent_batch": ["--agent-batch", "7"],
    "min_agent_size": ["--min-agent-size", "7"], "agent_capacity": ["--agent-capacity", "7"],
    "updates_per_transition": ["--updates-per-transition", "0.25"],
    "candidates_per_update": ["--candidates-per-update", "7"],
    "refresh_every": ["--refresh-every", "7"], "diffusion_steps": ["--diffusion-steps", "7"],
    "compute_dtype": ["--compute-dtype", "bfloat16"],
}  # fmt: skip


def test_every_learner_flag_is_reachable_and_defaults_to_the_preset() -> None:
    from sd2ail_reward.config import preset

    assert set(LEARNER_FLAGS) == {f.name for f in dataclasses.fields(LearnerFlags)}
    default = parse_serve_args(["--demos", "d.zarr"]).learner
    assert default == LearnerFlags()
    assert learner_config(default, "Pendulum-v1") == preset("pendulum")
    for field, flags in LEARNER_FLAGS.items():
        given = parse_serve_args(["--demos", "d.zarr", *flags]).learner
        assert dataclasses.replace(given, **{field: getattr(default, field)}) == default
        assert getattr(given, field) != getattr(default, field), field


def test_compute_dtype_flag_reaches_the_discriminator_config() -> None:
    def config(*flags: str) -> object:
        args = parse_serve_args(["--demos", "d.zarr", *flags])
        return learner_config(args.learner, "Hopper-v5").discriminator.compute_dtype

    assert config() == "float32"
    assert config("--compute-dtype", "bfloat16") == "bfloat16"


def field_docstrings(cls: type) -> dict[str, str]:
    """The attribute docstring under each field of dataclass `cls` (inherited ones included,
    a subclass's winning), whitespace collapsed."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        assert isinstance(body, ast.ClassDef)
        for node, after in zip(body.body, body.body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
            ):
                docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def help_text(parse: object, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse(["--help"])  # type: ignore[operator]
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.replace("│", " ").split())


@pytest.mark.parametrize("command", ["serve", "train", "minimal_sac", "sb3_example", "record"])
def test_help_shows_every_fields_docstring(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each field's docstring is its flag's help (wide columns: no wrapping to undo)."""
    monkeypatch.setenv("COLUMNS", "400")
    if command == "serve":
        from sd2ail_reward.serve_cli import ServeArgs

        parse, classes = parse_serve_args, [ServeArgs, LearnerFlags, ServeOptions]
    elif command == "train":
        from agents.recipes import TrainArgs, parse_train_args

        parse, classes = parse_train_args, [TrainArgs]
    elif command == "record":
        from agents.expert import RecordArgs
        from agents.expert import parse_args as parse

        classes = [RecordArgs]
    else:
        module = pytest.importorskip(f"agents.{command}")
        parse, classes = module.parse_args, [module.Args]
    text = help_text(parse, capsys)
    for cls in classes:
        docs, types = field_docstrings(cls), typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in NOT_ON_THE_COMMAND_LINE or dataclasses.is_dataclass(types[f.name]):
                continue  # a nested dataclass is a group of flags, checked field by field
            assert f.name in docs, f"{cls.__name__}.{f.name} has no docstring"
            assert docs[f.name] in text, (cls.__name__, f.name)


def test_the_spellings_of_scripts_and_long_runs_still_parse() -> None:
    """As the Makefile, README, benchmarks/grid.py and resumed runs spell them."""
    from agents.recipes import PENDULUM_CI_FLAGS, parse_train_args

    args = parse_train_args(
        [
            *PENDULUM_CI_FLAGS,
            *("--no-progress", "--run-dir", "r", "--steps", "5", "--resume", "--no-relabel"),
            *("--no-relabel-prefetch", "--no-overlap", "--critic-layer-norm", "--no-fixed-length"),
            *("--sac-recipe", "expert", "--normalize-obs", "--target-entropy", "-2"),
            "--server-arg=--updates-per-transition=0.25",
        ]
    )
    assert args.server_args == (
        "--hidden-dim=64",
        "--expert-batch=128",
        "--agent-batch=128",
        "--candidates-per-update=128",
        "--updates-per-transition=0.25",
    )
    assert (args.demo_episodes, args.hidden_sizes, args.target_entropy) == ((6,), (128, 128), -2)
    assert (args.resume, args.progress, args.relabel, args.relabel_prefetch) == (True, *[False] * 3)
    assert (args.overlap, args.critic_layer_norm, args.fixed_length) == (False, True, False)
    assert (args.sac_recipe, args.lr, args.normalize_obs) == ("expert", 1e-3, True)
    assert parse_train_args(["--demos", "", "--no-normalize-obs"]).demos == ""
    assert parse_train_args(["--no-normalize-obs"]).normalize_obs is False


def test_a_dash_led_value_with_a_space_is_the_flags_value_as_with_argparse() -> None:
    from agents.minimal_sac import parse_args

    args = parse_args(["--serve-args", "--hidden-dim 32 --expert-batch 32", "--steps", "3"])
    assert (args.serve_args, args.steps) == ("--hidden-dim 32 --expert-batch 32", 3)
    assert parse_args(["--serve-args=--hidden-dim=32"]).serve_args == "--hidden-dim=32"
    with pytest.raises(SystemExit):
        parse_args(["--steps", "--seed"])  # a mistyped value is still an error
