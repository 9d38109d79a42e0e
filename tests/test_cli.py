"""The command line maps onto the dataclasses it configures, with their defaults."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import subprocess
import sys
import textwrap
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from sd2ail_reward.serve_cli import (
    LEARNER_FLAG_FIELDS,
    LearnerFlags,
    learner_config,
    parse_serve_args,
)
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
        "sync_torch_threads": ["--sync-threads", "2"],
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
    "pin_cores": ["--pin-cores"], "sac_threads": ["--sac-threads", "2"],
    "sac_dtype": ["--sac-dtype", "bfloat16"],
    "overlap": ["--no-overlap"], "reward": ["--reward", "env"],
    "eval_every": ["--eval-every", "7"], "eval_episodes": ["--eval-episodes", "2"],
    "target_return": ["--target-return", "1"],
    "target_full_episodes": ["--target-full-episodes"], "start_steps": ["--start-steps", "9"],
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
    "sac_init": ["--sac-init", "rlkit"], "policy_reg": ["--policy-reg", "0.001"],
    "server_args": ["--server-arg=--hidden-dim=8"], "progress": ["--no-progress"],
}  # fmt: skip
"""One flag per TrainArgs field. --sac-recipe also sets the recipe's fields it does not
override (lr, beta1, alpha, fixed length), so it is checked apart."""


def test_every_train_field_is_reachable_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import agents.recipes
    from agents.recipes import TrainArgs

    monkeypatch.setattr(agents.recipes, "cpu_bf16_supported", lambda: True)  # --sac-dtype

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
    "normalize_obs": ["--no-normalize-obs"],
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
        if field not in {"algo", "preset", "seed", "device"}:  # a shaping flag: it reaches
            assert field in {flag for flag, _, _ in LEARNER_FLAG_FIELDS}, field  # the config
            assert learner_config(given, "Pendulum-v1") != preset("pendulum"), field


def test_an_env_without_a_preset_is_served_with_the_preset_named() -> None:
    from sd2ail_reward.config import preset

    def config(env_id: str, *flags: str) -> object:
        return learner_config(parse_serve_args(["--demos", "d.zarr", *flags]).learner, env_id)

    with pytest.raises(ValueError, match=r"no preset for env 'my_pkg:MyEnv-v0'.*--preset"):
        config("my_pkg:MyEnv-v0")
    with pytest.raises(ValueError, match=r"is for Hopper-v5.*--preset hopper"):
        config("Hopper-v4")  # found from the id, but for another version: not silently
    own = config("my_pkg:MyEnv-v0", "--preset", "hopper", "--algo", "diffail")
    assert own == dataclasses.replace(preset("hopper", "diffail"), env_id="my_pkg:MyEnv-v0")


def test_compute_dtype_flag_reaches_the_discriminator_config() -> None:
    def config(*flags: str) -> object:
        args = parse_serve_args(["--demos", "d.zarr", *flags])
        return learner_config(args.learner, "Hopper-v5").discriminator.compute_dtype

    assert config() == "float32"
    assert config("--compute-dtype", "bfloat16") == "bfloat16"


def test_pin_cores_splits_the_allowed_cores_and_the_server_gets_the_rest(tmp_path: Path) -> None:
    from agents.local_server import local_serve_args, split_cores
    from agents.recipes import parse_train_args

    assert split_cores([3, 1, 2]) == (1, [2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        split_cores([0])
    args = parse_train_args(["--pin-cores", "--server-arg=--hidden-dim=8"])
    serve = local_serve_args(args, tmp_path, "", [1, 2])
    assert serve[serve.index("--cpus") :] == ["--cpus", "1", "2", "--hidden-dim=8"]
    assert "--cpus" not in local_serve_args(args, tmp_path)
    assert parse_serve_args(serve[:-1]).cpus == (1, 2)


def test_sac_threads_sets_train_torch_threads_and_refuses_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from agents.recipes import parse_train_args

    assert parse_train_args(["--sac-threads", "2"]).sac_threads == 2
    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(["--sac-threads", "0"])
    assert exit_info.value.code == 2
    assert "--sac-threads must be >= 1" in capsys.readouterr().err


def test_serve_pins_itself_before_it_starts(tmp_path: Path) -> None:
    """`serve --cpus` pins the process (checked in a child, so the test process stays free);
    an unusable core set is a clear error, exit 2."""
    import os

    code = (
        "import os, sys; from sd2ail_reward.serve_cli import pin_to_cores; "
        "pin_to_cores([min(os.sched_getaffinity(0))]); print(sorted(os.sched_getaffinity(0)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str([min(os.sched_getaffinity(0))])
    bad = subprocess.run(
        [sys.executable, "-m", "sd2ail_reward.cli", "serve", "--demos", "d.zarr", "--cpus", "999"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "--cpus" in bad.stderr


def test_normalize_obs_flag_overrides_the_preset_either_way() -> None:
    def normalised(env_id: str, *flags: str) -> bool:
        args = parse_serve_args(["--demos", "d.zarr", *flags])
        return learner_config(args.learner, env_id).normalize_obs

    assert normalised("HalfCheetah-v5") is False  # the reference's preset
    assert normalised("HalfCheetah-v5", "--normalize-obs") is True
    assert normalised("Hopper-v5") is True
    assert normalised("Hopper-v5", "--no-normalize-obs") is False


# ---------------------------------------------------------------- demos, plot, ray, remote


def command_line(name: str) -> tuple[Callable[[Sequence[str]], Any], type, list[str], object]:
    """(parse, its dataclass, the required words, what those alone parse to) of a command."""
    from sd2ail_reward import demos_cli as d

    store = Path("s.zarr")
    demos = {
        "demos inspect": (["s.zarr"], d.InspectArgs(store)),
        "demos verify": (["s.zarr"], d.VerifyArgs(store)),
        "demos import-minari": (["ds-v0", "o.zarr"], d.ImportMinariArgs("ds-v0", Path("o.zarr"))),
        "demos export-minari": (["s.zarr", "x/y-v0"], d.ExportMinariArgs(store, "x/y-v0")),
    }
    if name in demos:
        action = name.removeprefix("demos ")
        parse = functools.partial(d.parse_demos_args, action)
        return parse, d.DEMOS_ACTIONS[action], *demos[name]
    if name == "plot":
        from agents.plot import PlotArgs, parse_args

        return parse_args, PlotArgs, ["r1", "r2"], PlotArgs(run_dirs=(Path("r1"), Path("r2")))
    if name == "ray_workers":
        ray_workers = pytest.importorskip("agents.ray_workers")
        return ray_workers.parse_args, ray_workers.Args, [], ray_workers.Args()
    remote = pytest.importorskip("agents.remote_example")
    command = name.removeprefix("remote ")

    def parse_command(argv: Sequence[str]) -> object:
        parsed, extra = remote.parse_args([command, *argv])
        assert extra == []
        return parsed

    if command == "serve":
        return (
            parse_command,
            remote.ServeCommand,
            ["--token-file", "t"],
            remote.ServeCommand(Path("t")),
        )
    required = ["--address", "a:1", "--token-file", "t"]
    return parse_command, remote.AgentCommand, required, remote.AgentCommand("a:1", Path("t"))


COMMAND_FLAGS: dict[str, dict[str, list[str]]] = {
    "demos inspect": {},
    "demos verify": {"num_episodes": ["--num-episodes", "3"], "tol": ["--tol", "0.1"]},
    "demos import-minari": {
        "episodes": ["--episodes", "0", "1"], "env_id": ["--env-id", "Pendulum-v1"],
        "overwrite": ["--overwrite"],
    },
    "demos export-minari": {"data_format": ["--data-format", "arrow"]},
    "plot": {"out": ["--out", "o"]},
    "ray_workers": {
        "workers": ["--workers", "3"], "ray_address": ["--ray-address", "auto"],
        "num_cpus": ["--num-cpus", "3"], "cpus_per_worker": ["--cpus-per-worker", "0.5"],
        "server": ["--server", "h:1"], "token": ["--token", "t"],
        "token_file": ["--token-file", "tf"], "tls_ca": ["--tls-ca", "ca.pem"],
        "demos": ["--demos", "d.zarr"], "demo_episodes": ["--demo-episodes", "1", "2"],
        "serve_args": ["--serve-args", "--hidden-dim 32"], "steps": ["--steps", "7"],
        "start_steps": ["--start-steps", "7"], "collect_per_worker": ["--collect-per-worker", "7"],
        "eval_every": ["--eval-every", "7"], "eval_episodes": ["--eval-episodes", "7"],
        "sync_every": ["--sync-every", "0"], "hidden": ["--hidden", "8"],
        "push_batch": ["--push-batch", "7"], "seed": ["--seed", "7"], "threads": ["--threads", "2"],
        "collect_only": ["--collect-only", "7"],
    },
    "remote serve": {
        "host": ["--host", "0.0.0.0"], "port": ["--port", "7"], "demos": ["--demos", "d.zarr"],
        "log_file": ["--log-file", "l.log"],
    },
    "remote agent": {
        "tls_ca": ["--tls-ca", "ca.pem"], "steps": ["--steps", "7"],
        "push_batch": ["--push-batch", "7"], "seed": ["--seed", "7"],
    },
}  # fmt: skip
"""One flag per field that has a default; the others are the required words."""


@pytest.mark.parametrize("name", list(COMMAND_FLAGS))
def test_every_field_of_the_other_commands_is_reachable_with_its_default(name: str) -> None:
    """The required words alone give the dataclass's defaults; each flag changes its field."""
    parse, cls, required, default = command_line(name)
    assert parse(required) == default
    flags = COMMAND_FLAGS[name]
    optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    assert set(flags) == optional
    for field, words in flags.items():
        given = parse([*required, *words])
        changed = {
            f.name
            for f in dataclasses.fields(cls)
            if getattr(given, f.name) != getattr(default, f.name)
        }
        assert changed == {field}, (name, field, changed)


def test_plot_needs_a_run_dir() -> None:
    from agents.plot import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--out", "o"])
    assert exit_.value.code == 2


def test_remote_serve_hands_other_flags_to_serve_and_agent_refuses_them() -> None:
    remote = pytest.importorskip("agents.remote_example")
    words = ["--demo-episodes", "6", "1", "--hidden-dim=32", "--no-train"]
    command, extra = remote.parse_args(["serve", "--token-file", "t", *words])
    assert (command.token_file, extra) == (Path("t"), words)
    agent = ["agent", "--address", "a:1", "--token-file", "t", "--hidden-dim", "32"]
    assert remote.main(agent) == 2


def test_the_demos_spellings_route_to_their_action() -> None:
    """As README, benchmarks/grid.py and the tests spell them, --log-level first or not."""
    from sd2ail_reward.cli import build_parser
    from sd2ail_reward.demos_cli import VerifyArgs, parse_demos_args

    store = "runs/x/Hopper-v5.zarr"
    for argv in (
        ["demos", "verify", store, "--num-episodes", "3"],
        ["--log-level", "DEBUG", "demos", "verify", "--num-episodes", "3", store],
    ):
        args, rest = build_parser().parse_known_args(argv)
        assert args.action == "verify"
        assert parse_demos_args(args.action, rest) == VerifyArgs(Path(store), num_episodes=3)


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


@pytest.mark.parametrize(
    "command",
    ["serve", "train", "minimal_sac", "sb3_example", "record", "remote", *COMMAND_FLAGS],
)
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
    elif command == "remote":
        remote = pytest.importorskip("agents.remote_example")
        parse, classes = remote.parse_args, [remote.Args]
    elif command in COMMAND_FLAGS:
        parse, cls, _, _ = command_line(command)
        classes = [cls]
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
