"""tests/grpc/tts_server.py and tests/grpc/tts_client.py against each other (no corelb in
between yet), and each against corelb-backend --protocol grpc: same answers from both
servers, the client's report (counts per server, errors by code), deadlines, health.
"""

import json
import subprocess
import sys

import grpc
import pytest

from conftest import TTS_CLIENT, Server, backend_argv, tts_server_argv
from stubs import health_pb2, health_pb2_grpc, pb, pb_grpc

TIMEOUT = 10


def client(addr, *args, check=True):
    """Runs tts_client.py with --json; (exit code, report)."""
    out = subprocess.run(
        [sys.executable, TTS_CLIENT, "--target", addr, "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert out.returncode == 0, out.stderr + out.stdout
    return out.returncode, json.loads(out.stdout)


@pytest.fixture(scope="module")
def servers():
    """Two tts_server.py (X and Y) and a corelb-backend (A)."""
    started = [Server(tts_server_argv(id="X")), Server(tts_server_argv(id="Y")), Server(backend_argv())]
    yield started
    for s in started:
        s.stop()


def test_client_unary_per_server(servers):
    for s, sid in zip(servers, "XYA"):
        _, r = client(s.addr, "--calls", "200", "--concurrency", "16", "--chunk-bytes", "100")
        assert (r["ok"], r["errors"], r["servers"]) == (200, {}, {sid: 200})
        assert r["audio_bytes"] == 200 * 4 * 100
        assert r["calls_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]


def test_client_stream(servers):
    for s, sid in zip(servers, "XYA"):
        _, r = client(
            s.addr, "--mode", "stream", "--calls", "40", "--concurrency", "8",
            "--chunks", "12", "--chunk-bytes", "3000", "--channels", "2",
        )
        assert (r["ok"], r["servers"]) == (40, {sid: 40})
        assert r["audio_bytes"] == 40 * 12 * 3000


def test_servers_answer_alike(servers):
    """The grpcio server and corelb-backend give the same messages and metadata."""
    x, _, a = servers
    request = pb.SynthesizeRequest(text="hi", chunks=7, chunk_bytes=333)
    md = [("x-echo-k", "v")]
    answers = []
    for s in (x, a):
        with s.channel() as ch:
            stub = pb_grpc.TTSStub(ch)
            unary, call = stub.Synthesize.with_call(request, metadata=md, timeout=TIMEOUT)
            it = stub.SynthesizeStream(request, metadata=md, timeout=TIMEOUT)
            chunks = [(c.seq, c.audio, c.last) for c in it]
            trailing = dict(it.trailing_metadata())
            answers.append(
                (unary.audio, unary.sample_rate, chunks, dict(call.initial_metadata())["x-echo-k"],
                 trailing["x-echo-k"], trailing["x-backend"] == unary.backend)
            )
    assert answers[0] == answers[1]


def test_client_reports_deadlines_and_errors(start_server):
    slow = start_server(tts_server_argv("--delay-ms", "300", id="S"))
    code, r = client(slow.addr, "--calls", "4", "--concurrency", "4", "--timeout", "0.05", check=False)
    assert code == 1
    assert (r["ok"], r["errors"]) == (0, {"DEADLINE_EXCEEDED": 4})
    code, r = client(slow.addr, "--calls", "2", "--timeout", "0.05", "--allow-errors", check=False)
    assert code == 0 and r["errors"] == {"DEADLINE_EXCEEDED": 2}
    # The server still answers calls with room for its delay.
    _, r = client(slow.addr, "--calls", "4", "--concurrency", "4")
    assert r["ok"] == 4 and r["p50_ms"] >= 300

    failing = start_server(tts_server_argv("--error-rate", "1", id="E"))
    code, r = client(failing.addr, "--calls", "5", check=False)
    assert code == 1 and r["errors"] == {"UNAVAILABLE": 5}


def test_tts_server_statuses_and_metadata(servers):
    with servers[0].channel() as ch:
        stub = pb_grpc.TTSStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Synthesize(pb.SynthesizeRequest(), timeout=TIMEOUT)
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "empty text")
        sent = [("x-echo-data-bin", b"\x01\x02")]
        _, call = stub.Synthesize.with_call(pb.SynthesizeRequest(text="a"), metadata=sent, timeout=TIMEOUT)
        assert dict(call.initial_metadata())["x-echo-data-bin"] == b"\x01\x02"
        assert dict(call.trailing_metadata())["x-backend"] == "X"


def test_tts_server_cancel_mid_stream(servers):
    with servers[1].channel() as ch:
        stub = pb_grpc.TTSStub(ch)
        it = stub.SynthesizeStream(pb.SynthesizeRequest(text="a", chunks=500, chunk_interval_ms=10), timeout=TIMEOUT)
        assert next(it).seq == 0
        it.cancel()
        with pytest.raises(grpc.RpcError) as e:
            list(it)
        assert e.value.code() == grpc.StatusCode.CANCELLED
        assert stub.Synthesize(pb.SynthesizeRequest(text="a"), timeout=TIMEOUT).backend == "Y"


def test_tts_server_health_switch(start_server):
    s = start_server(tts_server_argv("--not-serving", id="H"))
    with s.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        control = pb_grpc.ControlStub(ch)
        R = health_pb2.HealthCheckResponse

        def check(service=""):
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status

        assert check() == R.NOT_SERVING
        control.SetServing(pb.SetServingRequest(serving=True), timeout=TIMEOUT)
        assert (check(), check("tts.TTS")) == (R.SERVING, R.SERVING)
        control.SetServing(pb.SetServingRequest(serving=False), timeout=TIMEOUT)
        assert (check(), check("tts.TTS")) == (R.NOT_SERVING, R.NOT_SERVING)
        with pytest.raises(grpc.RpcError) as e:
            check("nope")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
