"""Regenerate the gRPC/protobuf modules in sd2ail_reward/rpc/ from proto/sd2ail/v1/.

    python scripts/gen_proto.py            # rewrite sd2ail_reward/rpc/reward_pb2*.py(i)
    python scripts/gen_proto.py --check    # exit 1 if the committed files differ
    python scripts/gen_proto.py --out DIR  # write DIR/sd2ail_reward/rpc/... instead

Uses `python -m grpc_tools.protoc` (grpcio-tools==1.85.1, a dev dependency). protoc writes
absolute imports that follow the proto's *virtual* path, so the proto directory is mapped onto
the package path (`-Isd2ail_reward/rpc=proto/sd2ail/v1`): the generated `reward_pb2_grpc.py`
then imports `from sd2ail_reward.rpc import reward_pb2` and needs no editing. Generated files
are never edited by hand; tests/test_proto.py fails when they differ from a fresh generation.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = Path("proto/sd2ail/v1")
PACKAGE_DIR = Path("sd2ail_reward/rpc")
PROTOS = ("reward.proto",)
GENERATED = ("reward_pb2.py", "reward_pb2.pyi", "reward_pb2_grpc.py")
TOOLS_VERSION = "1.85.1"


def generate(out_root: Path) -> list[Path]:
    """Run protoc; returns the generated files (under out_root / sd2ail_reward / rpc)."""
    out_root.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PACKAGE_DIR.as_posix()}={PROTO_DIR.as_posix()}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[(PROTO_DIR / p).as_posix() for p in PROTOS],
    ]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return [out_root / PACKAGE_DIR / name for name in GENERATED]


def _tools_version() -> str:
    from importlib.metadata import version

    return version("grpcio-tools")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output root (default: the repository)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    if _tools_version() != TOOLS_VERSION:
        print(
            f"warning: grpcio-tools {_tools_version()} installed, the committed code was "
            f"generated with {TOOLS_VERSION}",
            file=sys.stderr,
        )
    if not args.check:
        for path in generate(args.out or ROOT):
            print(path)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [
            name
            for name, fresh in zip(GENERATED, generate(Path(tmp)), strict=True)
            if not (ROOT / PACKAGE_DIR / name).is_file()
            or (ROOT / PACKAGE_DIR / name).read_bytes() != fresh.read_bytes()
        ]
    for name in stale:
        print(f"{PACKAGE_DIR / name} is stale: run python scripts/gen_proto.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
