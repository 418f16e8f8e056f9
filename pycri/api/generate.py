"""Generate the CRI Python stubs from proto/api.proto with grpcio-tools.

The proto is compiled under the virtual path pycri/api/api.proto so that the generated gRPC module imports
its messages as `pycri.api.api_pb2` (package-relative), whatever the caller's working directory.
"""

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO = REPO / "proto" / "api.proto"


def main() -> int:
    from grpc_tools import protoc  # dev dependency: only needed to generate

    args = [
        "grpc_tools.protoc",
        f"-Ipycri/api={PROTO.parent}",
        f"--python_out={REPO}",
        f"--pyi_out={REPO}",
        f"--grpc_python_out={REPO}",
        "pycri/api/api.proto",
    ]
    rc = protoc.main(args)
    if rc != 0:
        print(f"protoc failed with {rc}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
