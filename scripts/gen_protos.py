"""Regenerate the Python stubs in fleet/v1/ from protos/fleet/v1/*.proto.

    python scripts/gen_protos.py            # write the stubs
    python scripts/gen_protos.py --out DIR  # write them under DIR instead (the drift test does)

The proto package fleet.v1 is also the Python import path, so generated imports need no rewriting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "fleet" / "v1").glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out / "fleet" / "v1").glob("*_pb2*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    ns = parser.parse_args()
    for path in generate(ns.out):
        print(path.relative_to(ns.out), file=sys.stderr)


if __name__ == "__main__":
    main()
