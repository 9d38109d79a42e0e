"""Checkpoint generations: round trip, corruption fallback, crash points, no pickle execution."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from sd2ail_reward.checkpoint import CheckpointError, CheckpointStore


def make_state(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "disc": {"w": torch.randn(8, 5, generator=g), "b": torch.randn(5, generator=g)},
        "optim": {
            "state": {0: {"exp_avg": torch.randn(3, generator=g), "step": torch.tensor(7.0)}},
            "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.999), "params": [0, 1]}],
        },
        "buffer": {"x": torch.randn(17, 4, generator=g).double(), "size": 17, "beta": 0.4 + seed},
        "rng": torch.get_rng_state(),
        "counts": torch.arange(6, dtype=torch.int64) * seed,
        "mask": torch.tensor([True, False]),
        "algo": "sd2ail",
        "nothing": None,
        "seed": seed,
    }


def assert_same(a: Any, b: Any) -> None:
    """Bitwise equality of nested states, including container types and int keys."""
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.contiguous().numpy().tobytes() == b.contiguous().numpy().tobytes()
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt")
    state = make_state(1)
    path = store.save(state, step=1000, meta={"env_id": "Hopper-v5", "model_version": 3})
    assert path.name == "gen-000001000"
    assert (tmp_path / "ckpt" / "LATEST").read_text().strip() == "gen-000001000"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["step"] == 1000
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    ck = store.load_latest()
    assert_same(ck.state, state)
    assert 0 in ck.state["optim"]["state"]  # int keys stay ints
    assert ck.step == 1000 and ck.path == path
    assert ck.meta == {"env_id": "Hopper-v5", "model_version": 3}
    again = store.save(make_state(2), step=1000)  # same step: a new, suffixed generation
    assert again.name == "gen-000001000.1"
    assert_same(store.load_latest().state, make_state(2))
    assert store.generations() == [path, again]


def test_unloadable_state_is_refused_at_save(tmp_path: Path) -> None:
    import numpy as np

    store = CheckpointStore(tmp_path)
    with pytest.raises(TypeError, match=r"state\['buf'\]\['x'\] is a numpy.ndarray"):
        store.save({"buf": {"x": np.zeros(3)}}, step=1)
    with pytest.raises(TypeError, match="meta"):
        store.save({}, step=1, meta={"x": object()})
    assert store.generations() == []


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_corrupt_newest_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(tmp_path)
    store.save(make_state(1), step=1)
    newest = store.save(make_state(2), step=2)
    flip_byte(newest / "state.pt")
    with caplog.at_level(logging.WARNING, logger="sd2ail_reward.checkpoint"):
        ck = store.load_latest()
    assert ck.step == 1
    assert_same(ck.state, make_state(1))
    assert "gen-000000002" in caplog.text and "sha256" in caplog.text


def test_half_written_generations_are_ignored(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    good = store.save(make_state(1), step=1)
    tmp = tmp_path / ".tmp-abc123"
    tmp.mkdir()
    torch.save(make_state(9), tmp / "state.pt")
    incomplete = tmp_path / "gen-000000005"
    incomplete.mkdir()
    torch.save(make_state(5), incomplete / "state.pt")
    assert store.generations() == [good]
    assert store.load_latest().step == 1
    (tmp_path / "LATEST").write_text("gen-000000005\n")  # even if LATEST names it
    assert store.load_latest().step == 1
    store.save(make_state(2), step=2)
    assert not tmp.exists()  # the next save clears crashed work


def test_latest_pointing_nowhere_falls_back(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(make_state(1), step=1)
    store.save(make_state(2), step=2)
    (tmp_path / "LATEST").write_text("gen-000000099\n")
    assert store.load_latest().step == 2
    (tmp_path / "LATEST").write_text("../../etc/passwd\n")
    assert store.load_latest().step == 2
    (tmp_path / "LATEST").unlink()
    assert store.load_latest().step == 2


def test_a_named_generation_loads_exactly_it_or_fails(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt")
    first = store.save(make_state(1), step=10)
    store.save(make_state(2), step=20)
    assert_same(store.load(first.name).state, make_state(1))  # not LATEST's
    for name in ("gen-000000030", "../ckpt/gen-000000010", "LATEST"):
        with pytest.raises(CheckpointError, match="no checkpoint generation"):
            store.load(name)
    (first / "state.pt").write_bytes(b"corrupt")
    with pytest.raises(CheckpointError):  # no quiet fallback to another generation
        store.load(first.name)


def test_nothing_loadable_raises(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no checkpoint generations"):
        store.load_latest()
    only = store.save(make_state(1), step=1)
    (only / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"tried: gen-000000001 \(manifest.json unreadable"):
        store.load_latest()


class Evil:
    """Pickles to a call of open(marker, "w"): loading it with plain pickle creates the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_crafted_pickle_is_never_executed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(make_state(1), step=1)
    evil_gen = store.save(make_state(2), step=2)
    marker = tmp_path / "pwned"
    torch.save({"x": Evil(marker)}, evil_gen / "state.pt")
    data = (evil_gen / "state.pt").read_bytes()
    manifest = json.loads((evil_gen / "manifest.json").read_text())
    manifest["files"]["state.pt"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (evil_gen / "manifest.json").write_text(json.dumps(manifest))

    ck = store.load_latest()
    assert ck.step == 1  # refused, fell back
    assert not marker.exists()

    (store.root / "gen-000000001" / "state.pt").write_bytes(data)  # no good generation left
    with pytest.raises(CheckpointError, match="weights_only"):
        store.load_latest()
    assert not marker.exists()

    control = tmp_path / "control"  # the payload is live: an unsafe load does run it
    torch.save({"x": Evil(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)["x"].close()
    assert control.exists()


def test_keep_prunes_oldest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for step in range(1, 6):
        store.save({"step": torch.tensor(step)}, step=step)
    assert [p.name for p in store.generations()] == ["gen-000000004", "gen-000000005"]
    # A save for an older step (e.g. after a fallback) is newest by LATEST and never pruned.
    store.save({"step": torch.tensor(3)}, step=3)
    assert (tmp_path / "gen-000000003").exists()
    assert store.load_latest().step == 3
    with pytest.raises(ValueError):
        CheckpointStore(tmp_path, keep=0)


class Crash(OSError):
    pass


@pytest.mark.parametrize("fn_name", ["replace", "fsync"])
def test_crash_at_every_point_leaves_old_or_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fn_name: str
) -> None:
    real = getattr(os, fn_name)
    old, new = make_state(1), make_state(2)

    calls = 0

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    probe = CheckpointStore(tmp_path / "probe")
    probe.save(old, step=1)
    monkeypatch.setattr(os, fn_name, counting)
    probe.save(new, step=2)
    monkeypatch.undo()
    n_calls = calls
    assert n_calls >= 2

    outcomes = set()
    for k in range(1, n_calls + 1):
        store = CheckpointStore(tmp_path / f"crash-{k}", keep=1)
        store.save(old, step=1)
        count = 0

        def crash_at_k(*args: Any, _k: int = k, **kwargs: Any) -> Any:
            nonlocal count
            count += 1
            if count == _k:
                raise Crash(f"simulated crash at {fn_name} call {_k}")
            return real(*args, **kwargs)

        monkeypatch.setattr(os, fn_name, crash_at_k)
        with pytest.raises(Crash):
            store.save(new, step=2)
        monkeypatch.undo()

        ck = store.load_latest()
        assert ck.step in (1, 2), k
        assert_same(ck.state, old if ck.step == 1 else new)
        outcomes.add(ck.step)
        # The store keeps working after the crash.
        store.save(make_state(3), step=3)
        assert store.load_latest().step == 3
        assert_same(store.load_latest().state, make_state(3))
    assert 1 in outcomes
    if fn_name == "fsync":  # the last fsync (of root, after LATEST moved) leaves the new one
        assert 2 in outcomes
