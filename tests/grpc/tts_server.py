"""A grpcio TTS server: the reference gRPC implementation of backend/proto/tts.proto.

Serves tts.TTS (Synthesize, SynthesizeStream), tts.Control/SetServing and
grpc.health.v1.Health (grpcio-health-checking) with the same answers as
`corelb-backend --protocol grpc`: audio a..z repeated, `backend` naming --id, x-backend in
the initial and trailing metadata, x-echo-* request metadata echoed in both. Tests put it
behind corelb as a real gRPC server.

  target/grpc-venv/bin/python tests/grpc/tts_server.py --port 50051 --id A --delay-ms 20

Prints "tts_server ID listening on HOST:PORT" once bound (--port 0 picks a free port);
SIGTERM or SIGINT stops it.
"""

import argparse
import os
import random
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stubs import health_lib, health_pb2, health_pb2_grpc, pb, pb_grpc  # noqa: E402

DEFAULT_CHUNKS = 4
DEFAULT_CHUNK_BYTES = 1024
MAX_CHUNKS = 10_000
MAX_CHUNK_BYTES = 1 << 20
SAMPLE_RATE = 16_000
SERVICES = ("", "tts.TTS")
ALPHABET = bytes(range(97, 123))


def audio(offset, n):
    """n bytes of a..z repeated, starting at `offset` of the pattern."""
    start = offset % 26
    reps = (start + n) // 26 + 1
    return (ALPHABET * reps)[start : start + n]


class Tts(pb_grpc.TTSServicer):
    def __init__(self, args):
        self.id = args.id
        self.delay = args.delay_ms / 1000
        self.error_rate = args.error_rate
        self.rng = random.Random(args.seed)
        self.lock = threading.Lock()

    def _begin(self, request, context):
        """Checks the request, sends the initial metadata, waits the delay; (chunks, bytes)."""
        if not request.text:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty text")
        chunks = request.chunks or DEFAULT_CHUNKS
        size = request.chunk_bytes or DEFAULT_CHUNK_BYTES
        if chunks > MAX_CHUNKS or size > MAX_CHUNK_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "too much audio asked")
        echo = tuple((k, v) for k, v in context.invocation_metadata() if k.startswith("x-echo-"))
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            failed = self.error_rate > 0 and self.rng.random() < self.error_rate
        if failed:
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected error (--error-rate)")
        context.send_initial_metadata((("x-backend", self.id),) + echo)
        context.set_trailing_metadata((("x-backend", self.id),) + echo)
        return chunks, size

    def Synthesize(self, request, context):
        chunks, size = self._begin(request, context)
        return pb.SynthesizeResponse(
            audio=audio(0, chunks * size),
            sample_rate=SAMPLE_RATE,
            backend=self.id,
            latency_ms=round(self.delay * 1000),
        )

    def SynthesizeStream(self, request, context):
        chunks, size = self._begin(request, context)
        for seq in range(chunks):
            if seq and request.chunk_interval_ms:
                time.sleep(request.chunk_interval_ms / 1000)
            if not context.is_active():
                return
            yield pb.AudioChunk(
                seq=seq, audio=audio(seq * size, size), last=seq + 1 == chunks, backend=self.id
            )


class Control(pb_grpc.ControlServicer):
    def __init__(self, health):
        self.health = health

    def SetServing(self, request, context):
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if request.serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in SERVICES:
            self.health.set(service, status)
        return pb.SetServingResponse(serving=request.serving)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=50051, help="port (0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--id", default="A", help="server id, in responses and metadata")
    p.add_argument("--delay-ms", type=float, default=0, help="wait before each answer")
    p.add_argument("--error-rate", type=float, default=0, help="fraction answered UNAVAILABLE")
    p.add_argument("--not-serving", action="store_true", help="start NOT_SERVING")
    p.add_argument("--workers", type=int, default=32, help="handler threads")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=[("grpc.so_reuseport", 0)],
    )
    health = health_lib.HealthServicer()
    pb_grpc.add_TTSServicer_to_server(Tts(args), server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    control = Control(health)
    pb_grpc.add_ControlServicer_to_server(control, server)
    control.SetServing(pb.SetServingRequest(serving=not args.not_serving), None)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        sys.exit(f"tts_server: cannot bind {args.host}:{args.port}")
    server.start()
    print(f"tts_server {args.id} listening on {args.host}:{port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
