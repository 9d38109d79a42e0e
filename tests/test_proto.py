"""The wire contract: generated code is fresh, the fixed minimum is intact, upb parses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.internal import api_implementation

from sd2ail_reward.rpc import SERVICE_NAME, reward_pb2, reward_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
GENERATED = ("reward_pb2.py", "reward_pb2.pyi", "reward_pb2_grpc.py")


def test_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev dependency) regenerates the code")
    subprocess.run(
        [sys.executable, "scripts/gen_proto.py", "--out", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    for name in GENERATED:
        committed = (REPO / "sd2ail_reward" / "rpc" / name).read_text()
        fresh = (tmp_path / "sd2ail_reward" / "rpc" / name).read_text()
        assert committed == fresh, (
            f"sd2ail_reward/rpc/{name} differs from what proto/sd2ail/v1/reward.proto generates: "
            "run `python scripts/gen_proto.py` (grpcio-tools==1.85.1) and never edit it by hand"
        )


def test_generated_grpc_module_imports_from_the_package() -> None:
    source = (REPO / "sd2ail_reward" / "rpc" / "reward_pb2_grpc.py").read_text()
    assert "from sd2ail_reward.rpc import reward_pb2" in source
    assert reward_pb2_grpc.RewardServiceStub is not None


FIXED_MINIMUM = {
    "Tensor": {"shape": (1, "int64", True), "data": (2, "bytes", False)},
    "ComputeRewardRequest": {
        "obs": (1, "Tensor", False),
        "action": (2, "Tensor", False),
        "next_obs": (3, "Tensor", False),
    },
    "ComputeRewardResponse": {
        "reward": (1, "Tensor", False),
        "model_version": (2, "uint64", False),
    },
    "PushTransitionsRequest": {
        "obs": (1, "Tensor", False),
        "action": (2, "Tensor", False),
        "next_obs": (3, "Tensor", False),
        "client_id": (5, "string", False),
        "sequence": (6, "uint64", False),
    },
}

_TYPE_NAMES = {3: "int64", 4: "uint64", 9: "string", 12: "bytes"}


@pytest.mark.parametrize("message", sorted(FIXED_MINIMUM))
def test_fixed_minimum_fields_keep_their_numbers_and_types(message: str) -> None:
    descriptor = reward_pb2.DESCRIPTOR.message_types_by_name[message]
    for name, (number, type_name, repeated) in FIXED_MINIMUM[message].items():
        field = descriptor.fields_by_name[name]
        assert field.number == number, f"{message}.{name} renumbered"
        got = field.message_type.name if field.message_type else _TYPE_NAMES[field.type]
        assert got == type_name, f"{message}.{name} changed type"
        assert field.is_repeated == repeated


REMOVED_FIELDS = {"PushTransitionsRequest": {"done": 4}}
"""Fields that left the contract: their numbers and names are `reserved`, never reused."""


@pytest.mark.parametrize("message", sorted(REMOVED_FIELDS))
def test_removed_fields_are_reserved_by_number_and_name(message: str) -> None:
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto.FromString(reward_pb2.DESCRIPTOR.serialized_pb)
    (msg,) = [m for m in proto.message_type if m.name == message]
    numbers = {n for r in msg.reserved_range for n in range(r.start, r.end)}
    live = {f.name: f.number for f in msg.field}
    for name, number in REMOVED_FIELDS[message].items():
        assert number in numbers and name in msg.reserved_name, f"{message}.{name} not reserved"
        assert name not in live and number not in live.values(), f"{message}.{name} reused"


def test_service_package_and_methods() -> None:
    assert reward_pb2.DESCRIPTOR.package == "sd2ail.v1"
    service = reward_pb2.DESCRIPTOR.services_by_name["RewardService"]
    assert service.full_name == SERVICE_NAME
    assert {m.name for m in service.methods} >= {
        "GetInfo",
        "ComputeReward",
        "PushTransitions",
        "Sync",
        "GetStats",
        "SaveCheckpoint",
    }


def test_protobuf_uses_the_upb_backend() -> None:
    # The pure-Python backend had recursion DoS bugs on untrusted input (RELIABILITY.md §4.2).
    assert api_implementation.Type() == "upb"


def test_every_field_is_documented() -> None:
    """Each message and field in the .proto has a comment right above it (units and shapes)."""
    lines = (REPO / "proto" / "sd2ail" / "v1" / "reward.proto").read_text().splitlines()
    undocumented = []
    in_message = False
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith("message ") and not text.endswith("{}"):
            in_message = True
            continue
        if text == "}":
            in_message = False
            continue
        if in_message and text and not text.startswith("//") and "=" in text:
            j = i - 1
            while j >= 0 and lines[j].strip() == "":
                j -= 1
            prev = lines[j].strip()
            # A field may share the comment of the field right above it (a documented group).
            if not (prev.startswith("//") or ("=" in prev and prev.endswith(";"))):
                undocumented.append(text)
    assert not undocumented, f"fields without a comment: {undocumented}"
