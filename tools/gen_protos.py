"""Generates every artefact derived from `protos/` into `gen/` (never edited by hand).

- `gen/aggregator/...`: Python messages, typing stubs and grpc.aio stubs (grpcio-tools);
- `gen/descriptor.pb`: the descriptor set Envoy's gRPC-JSON transcoder loads;
- `gen/third_party/`: the googleapis protos our contracts import, copied from the pinned
  `googleapis-common-protos` wheel so that `buf lint` resolves them offline;
- `gen/betterproto/`: betterproto2 clients, proof that the contracts serve a second generator.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
THIRD_PARTY_FILES = ("google/api/annotations.proto", "google/api/http.proto", "google/api/httpbody.proto",
                     "google/rpc/status.proto", "google/rpc/error_details.proto")


def googleapis_root() -> Path:
    import google.api.annotations_pb2 as annotations

    return Path(annotations.__file__).resolve().parent.parent.parent


def run_protoc(args: list[str]) -> None:
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    argv = ["protoc", f"-I{PROTOS}", f"-I{GEN / 'third_party'}", f"-I{wkt}", *args]
    if protoc.main(argv) != 0:
        sys.exit(f"protoc failed: {' '.join(args[:3])}")


def main() -> None:
    if GEN.exists():
        shutil.rmtree(GEN)
    third_party = GEN / "third_party"
    for name in THIRD_PARTY_FILES:
        target = third_party / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(googleapis_root() / name, target)

    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    run_protoc([f"--python_out={GEN}", f"--pyi_out={GEN}", f"--grpc_python_out={GEN}", *sources])
    run_protoc([f"--descriptor_set_out={GEN / 'descriptor.pb'}", "--include_imports",
                "--include_source_info", *sources])
    for package_dir in (GEN / "aggregator").rglob("*"):
        if package_dir.is_dir():
            (package_dir / "__init__.py").touch()
    (GEN / "aggregator" / "__init__.py").touch()

    betterproto = GEN / "betterproto"
    betterproto.mkdir()
    plugin = Path(sys.executable).parent / "protoc-gen-python_betterproto2"
    if plugin.exists():
        # The plugin formats its output with `ruff`, found on PATH beside the interpreter.
        os.environ["PATH"] = f"{plugin.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        run_protoc([f"--plugin=protoc-gen-python_betterproto2={plugin}",
                    f"--python_betterproto2_out={betterproto}",
                    "--python_betterproto2_opt=client_generation=async",
                    *[s for s in sources if s.startswith("aggregator/openai/")]])


if __name__ == "__main__":
    main()
