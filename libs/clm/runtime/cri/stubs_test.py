"""The committed CRI stubs are what the pinned grpcio-tools makes of the committed proto
(tools/setup/gen-cri regenerates both)."""

from __future__ import annotations

import shutil
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).parent
DEBIAN_PROTO = Path(
    "/opt/clm/containerd-2.1/usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto"
)
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def test_stubs_match_the_proto(tmp_path: Path) -> None:
    package = tmp_path / "clm" / "runtime" / "cri"
    package.mkdir(parents=True)
    shutil.copy(HERE / "api.proto", package / "api.proto")
    args = ["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}"]
    code = protoc.main([*args, f"--pyi_out={tmp_path}", "clm/runtime/cri/api.proto"])
    assert code == 0
    stale = [n for n in GENERATED if (package / n).read_bytes() != (HERE / n).read_bytes()]
    assert stale == [], f"{stale} are stale: run tools/setup/gen-cri"


def test_the_proto_is_debians_when_it_is_installed() -> None:
    if DEBIAN_PROTO.exists():  # tools/setup/ensure-containerd unpacks it (CI always has it)
        assert DEBIAN_PROTO.read_bytes() == (HERE / "api.proto").read_bytes(), "run tools/setup/gen-cri"
    assert b"service RuntimeService" in (HERE / "api.proto").read_bytes()
