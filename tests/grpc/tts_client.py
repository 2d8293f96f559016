"""A grpcio load client for tts.TTS: unary or streaming calls at a given concurrency.

Reports calls, errors by status code, calls per server id (from the response's `backend`
field, else the x-backend trailing metadata), calls/s and latency percentiles. Used
against tests/grpc/tts_server.py, corelb-backend --protocol grpc, and corelb in front.

  target/grpc-venv/bin/python tests/grpc/tts_client.py --target 127.0.0.1:9090 \\
      --calls 1000 --concurrency 16 --mode stream --chunks 8 --json

Exit status: 0 if every call ended OK (or --allow-errors), 1 otherwise.
"""

import argparse
import collections
import json
import math
import os
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stubs import pb, pb_grpc  # noqa: E402


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    # Nearest rank: the smallest value with at least q of the values at or below it.
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def one_call(stub, mode, request, timeout, metadata):
    """One call: (status name, server id or "", audio bytes received)."""
    try:
        if mode == "unary":
            resp, call = stub.Synthesize.with_call(request, timeout=timeout, metadata=metadata)
            server, size = resp.backend, len(resp.audio)
        else:
            call = stub.SynthesizeStream(request, timeout=timeout, metadata=metadata)
            server, size = "", 0
            for chunk in call:
                server = server or chunk.backend
                size += len(chunk.audio)
        server = server or dict(call.trailing_metadata() or ()).get("x-backend", "")
        return "OK", server, size
    except grpc.RpcError as e:
        return e.code().name, "", 0


def channel(args):
    """A channel to --target: over TLS trusting --ca when given, else h2c."""
    if not args.ca:
        return grpc.insecure_channel(args.target)
    with open(args.ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.target, creds, options=options)


def run(args):
    """Runs the load; returns the report as a dict."""
    channels = [channel(args) for _ in range(args.channels)]
    stubs = [pb_grpc.TTSStub(ch) for ch in channels]
    request = pb.SynthesizeRequest(
        text=args.text,
        chunks=args.chunks,
        chunk_bytes=args.chunk_bytes,
        chunk_interval_ms=args.chunk_interval_ms,
    )
    metadata = tuple(tuple(m.split("=", 1)) for m in args.metadata)
    lock = threading.Lock()
    issued = [0]
    codes = collections.Counter()
    servers = collections.Counter()
    latencies = []
    audio = [0]

    def worker(w):
        stub = stubs[w % len(stubs)]
        while True:
            with lock:
                if issued[0] >= args.calls:
                    return
                issued[0] += 1
            t0 = time.monotonic()
            code, server, size = one_call(stub, args.mode, request, args.timeout, metadata)
            dt = time.monotonic() - t0
            with lock:
                codes[code] += 1
                if code == "OK":
                    servers[server or "?"] += 1
                    latencies.append(dt)
                    audio[0] += size

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    for ch in channels:
        ch.close()
    latencies.sort()
    ms = lambda s: round(s * 1000, 3)  # noqa: E731
    return {
        "target": args.target,
        "mode": args.mode,
        "calls": args.calls,
        "ok": codes.get("OK", 0),
        "errors": {c: n for c, n in sorted(codes.items()) if c != "OK"},
        "servers": dict(sorted(servers.items())),
        "audio_bytes": audio[0],
        "seconds": round(elapsed, 3),
        "calls_per_s": round(args.calls / elapsed, 1) if elapsed else 0.0,
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "max_ms": ms(latencies[-1]) if latencies else 0.0,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT")
    p.add_argument("--mode", choices=("unary", "stream"), default="unary")
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    p.add_argument("--channels", type=int, default=1, help="channels (connections) shared")
    p.add_argument("--text", default="hello")
    p.add_argument("--chunks", type=int, default=0, help="0: the server's default (4)")
    p.add_argument("--chunk-bytes", type=int, default=0, help="0: the server's default (1024)")
    p.add_argument("--chunk-interval-ms", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10, help="deadline of each call, seconds")
    p.add_argument("--metadata", action="append", default=[], help="KEY=VALUE, repeatable")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.add_argument("--ca", help="PEM CA bundle: call over TLS (grpc.ssl_channel_credentials)")
    p.add_argument("--server-name", help="TLS server name to expect (default: the target's host)")
    p.add_argument("--allow-errors", action="store_true", help="exit 0 even if calls failed")
    args = p.parse_args(argv)
    if args.calls < 0 or args.concurrency < 1 or args.channels < 1:
        p.error("--calls must be >= 0, --concurrency and --channels >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        for key, value in report.items():
            print(f"{key:>12}: {value}")
    ok = report["ok"] == report["calls"]
    return 0 if ok or args.allow_errors else 1


if __name__ == "__main__":
    sys.exit(main())
