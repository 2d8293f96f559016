"""Python stubs of backend/proto/tts.proto for the gRPC tests and scripts.

Importing this module (re)generates target/grpc-gen/tts_pb2*.py with grpcio-tools when
they are missing or older than the .proto (generated code is never committed), puts
target/grpc-gen on sys.path and re-exports the messages, the stubs and grpc_health's.
`python tests/grpc/stubs.py` only generates.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "backend", "proto")
PROTO = os.path.join(PROTO_DIR, "tts.proto")
GEN = os.path.join(ROOT, "target", "grpc-gen")
OUTPUTS = ("tts_pb2.py", "tts_pb2_grpc.py")


def generate():
    """Runs protoc (grpcio-tools) if an output is missing or older than the .proto."""
    outs = [os.path.join(GEN, f) for f in OUTPUTS]
    proto_time = os.path.getmtime(PROTO)
    if all(os.path.exists(o) and os.path.getmtime(o) >= proto_time for o in outs):
        return
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("grpcio-tools missing: run tests/grpc/setup.sh and use target/grpc-venv/bin/python")
    # Generate beside, then rename: a concurrent reader never sees half a file.
    tmp = f"{GEN}.tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", PROTO]
    if protoc.main(args) != 0:
        sys.exit(f"protoc failed on {PROTO}")
    os.makedirs(GEN, exist_ok=True)
    for f in OUTPUTS:
        os.replace(os.path.join(tmp, f), os.path.join(GEN, f))
    os.rmdir(tmp)


generate()
if GEN not in sys.path:
    sys.path.insert(0, GEN)

import tts_pb2 as pb  # noqa: E402
import tts_pb2_grpc as pb_grpc  # noqa: E402
from grpc_health.v1 import health as health_lib  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

__all__ = ["pb", "pb_grpc", "health_lib", "health_pb2", "health_pb2_grpc", "ROOT"]

if __name__ == "__main__":
    print(f"stubs: {GEN}")
