"""Interop of `corelb-backend --protocol grpc` with grpcio, the reference gRPC client.

The backend speaks HTTP/2 through corelb's sans-IO codec (src/h2/), so these tests check
that codec against a real peer: unary and server-streaming calls, flow control on large
messages, initial and trailing metadata, status codes and messages, deadlines,
cancellation, the health service, and many concurrent calls on one channel.
"""

import concurrent.futures
import time

import grpc
import pytest

from conftest import backend_argv
from stubs import health_pb2, health_pb2_grpc, pb, pb_grpc

TIMEOUT = 10


def pattern(offset, n):
    """The backend's audio bytes: a..z repeated, from `offset`."""
    return bytes(97 + (i % 26) for i in range(offset, offset + n))


def req(text="hello", **kw):
    return pb.SynthesizeRequest(text=text, **kw)


def test_unary(channel):
    stub = pb_grpc.TTSStub(channel)
    r = stub.Synthesize(req(chunks=3, chunk_bytes=100), timeout=TIMEOUT)
    assert r.audio == pattern(0, 300)
    assert (r.backend, r.sample_rate) == ("A", 16000)


def test_unary_defaults_and_large_messages(channel):
    stub = pb_grpc.TTSStub(channel)
    assert len(stub.Synthesize(req(), timeout=TIMEOUT).audio) == 4 * 1024
    # 3 MiB answer and 1 MiB request: many DATA frames and WINDOW_UPDATEs both ways.
    r = stub.Synthesize(req("x" * (1 << 20), chunks=48, chunk_bytes=65536), timeout=TIMEOUT)
    assert len(r.audio) == 3 << 20
    assert r.audio == pattern(0, 3 << 20)


@pytest.mark.parametrize("chunks,size", [(1, 10), (25, 1000), (200, 40_000)])
def test_server_streaming(channel, chunks, size):
    stub = pb_grpc.TTSStub(channel)
    got = list(stub.SynthesizeStream(req(chunks=chunks, chunk_bytes=size), timeout=TIMEOUT))
    assert len(got) == chunks
    assert [c.seq for c in got] == list(range(chunks))
    assert [c.last for c in got] == [False] * (chunks - 1) + [True]
    assert {c.backend for c in got} == {"A"}
    audio = b"".join(c.audio for c in got)
    assert len(audio) == chunks * size
    assert audio == pattern(0, chunks * size)


def test_stream_interval(channel):
    stub = pb_grpc.TTSStub(channel)
    t0 = time.monotonic()
    got = list(stub.SynthesizeStream(req(chunks=5, chunk_interval_ms=40), timeout=TIMEOUT))
    assert len(got) == 5
    assert time.monotonic() - t0 >= 0.15  # four pauses of 40 ms


def test_metadata(channel):
    stub = pb_grpc.TTSStub(channel)
    sent = [("x-echo-trace", "abc-123"), ("x-echo-data-bin", b"\x00\xffbin"), ("x-other", "no")]
    _, call = stub.Synthesize.with_call(req(), metadata=sent, timeout=TIMEOUT)
    initial = dict(call.initial_metadata())
    trailing = dict(call.trailing_metadata())
    for md in (initial, trailing):
        assert md["x-backend"] == "A"
        assert md["x-echo-trace"] == "abc-123"
        assert md["x-echo-data-bin"] == b"\x00\xffbin"
        assert "x-other" not in md
    assert call.code() == grpc.StatusCode.OK

    # Streaming: initial metadata before the first message, trailing after the last.
    it = stub.SynthesizeStream(req(chunks=3), metadata=sent[:1], timeout=TIMEOUT)
    assert dict(it.initial_metadata())["x-echo-trace"] == "abc-123"
    assert len(list(it)) == 3
    assert dict(it.trailing_metadata())["x-echo-trace"] == "abc-123"
    assert it.code() == grpc.StatusCode.OK


def expect_error(fn, code, details):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    assert e.value.code() == code, e.value
    assert e.value.details() == details


def test_status_codes(channel):
    stub = pb_grpc.TTSStub(channel)
    expect_error(
        lambda: stub.Synthesize(req(""), timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty text",
    )
    expect_error(
        lambda: list(stub.SynthesizeStream(req(chunks=10_001), timeout=TIMEOUT)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "too much audio asked",
    )
    nope = channel.unary_unary("/tts.TTS/Nope", lambda b: b, lambda b: b)
    expect_error(
        lambda: nope(b"", timeout=TIMEOUT), grpc.StatusCode.UNIMPLEMENTED, "unknown method"
    )
    # Compressed request messages are refused by name (grpcio leaves tiny ones plain).
    expect_error(
        lambda: stub.Synthesize(
            req("hello " * 200), compression=grpc.Compression.Gzip, timeout=TIMEOUT
        ),
        grpc.StatusCode.UNIMPLEMENTED,
        "compressed messages are not supported",
    )
    # The channel still works after errors.
    assert stub.Synthesize(req(), timeout=TIMEOUT).backend == "A"


def test_error_rate(start_server):
    s = start_server(backend_argv("--error-rate", "1"))
    with s.channel() as ch:
        stub = pb_grpc.TTSStub(ch)
        for call in (
            lambda: stub.Synthesize(req(), timeout=TIMEOUT),
            lambda: list(stub.SynthesizeStream(req(), timeout=TIMEOUT)),
        ):
            expect_error(call, grpc.StatusCode.UNAVAILABLE, "injected error (--error-rate)")
        # Health and control are not subject to injected errors.
        h = health_pb2_grpc.HealthStub(ch)
        assert h.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status == 1


def test_close_rate_resets_mid_stream(start_server):
    s = start_server(backend_argv("--close-rate", "1"))
    with s.channel() as ch:
        stub = pb_grpc.TTSStub(ch)
        # Paced, so grpcio hands out the first chunks before the reset discards the rest.
        it = stub.SynthesizeStream(req(chunks=10, chunk_interval_ms=30), timeout=TIMEOUT)
        got = []
        with pytest.raises(grpc.RpcError) as e:
            for c in it:
                got.append(c)
        # RST_STREAM INTERNAL_ERROR maps to INTERNAL (gRPC's PROTOCOL-HTTP2.md).
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert len(got) == 5


def test_slow_profile_answers(start_server):
    # Regression: the profile delay's timer was taken for a chunk pause, so with any
    # non-zero delay no gRPC TTS call was ever answered.
    s = start_server(backend_argv(profile="fixed:50"))
    with s.channel() as ch:
        stub = pb_grpc.TTSStub(ch)
        assert stub.Synthesize(req(), timeout=TIMEOUT).latency_ms == 50
        got = list(stub.SynthesizeStream(req(chunks=4, chunk_interval_ms=10), timeout=TIMEOUT))
        assert [c.seq for c in got] == [0, 1, 2, 3]


def test_deadline(start_server):
    s = start_server(backend_argv(profile="fixed:1500"))
    with s.channel() as ch:
        stub = pb_grpc.TTSStub(ch)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            stub.Synthesize(req(), timeout=0.1)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(grpc.RpcError) as e:
            list(stub.SynthesizeStream(req(), timeout=0.1))
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The backend dropped the expired calls and serves the next one in time.
        r = stub.Synthesize(req(), timeout=TIMEOUT)
        assert r.latency_ms == 1500
        assert s.alive()


def test_cancel_mid_stream(channel):
    stub = pb_grpc.TTSStub(channel)
    it = stub.SynthesizeStream(req(chunks=500, chunk_interval_ms=10), timeout=TIMEOUT)
    got = [next(it) for _ in range(3)]
    assert [c.seq for c in got] == [0, 1, 2]
    it.cancel()
    with pytest.raises(grpc.RpcError) as e:
        for _ in it:
            pass
    assert e.value.code() == grpc.StatusCode.CANCELLED
    # Other calls on the same connection go on, and so do new connections.
    assert len(list(stub.SynthesizeStream(req(chunks=20), timeout=TIMEOUT))) == 20
    assert stub.Synthesize(req(), timeout=TIMEOUT).backend == "A"


def test_cancel_many_streams_then_serve(channel):
    stub = pb_grpc.TTSStub(channel)
    streams = [
        stub.SynthesizeStream(req(chunks=1000, chunk_bytes=8192), timeout=TIMEOUT)
        for _ in range(20)
    ]
    for it in streams:
        next(it)
    for it in streams:
        it.cancel()
    r = stub.Synthesize(req(chunks=4, chunk_bytes=65536), timeout=TIMEOUT)
    assert len(r.audio) == 4 * 65536


def test_health(start_server):
    s = start_server(backend_argv())
    with s.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        control = pb_grpc.ControlStub(ch)
        SERVING = health_pb2.HealthCheckResponse.SERVING
        NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

        def check(service=""):
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)

        assert check().status == SERVING
        assert check("tts.TTS").status == SERVING
        expect_error(lambda: check("nope"), grpc.StatusCode.NOT_FOUND, "unknown service")
        assert control.SetServing(pb.SetServingRequest(serving=False), timeout=TIMEOUT).serving is False
        assert check().status == NOT_SERVING
        assert check("tts.TTS").status == NOT_SERVING
        # Not serving is what the health service says; calls are still answered.
        assert pb_grpc.TTSStub(ch).Synthesize(req(), timeout=TIMEOUT).backend == "A"
        assert control.SetServing(pb.SetServingRequest(serving=True), timeout=TIMEOUT).serving
        assert check().status == SERVING


def test_concurrent_unary_one_channel(channel):
    stub = pb_grpc.TTSStub(channel)
    futures = [stub.Synthesize.future(req(chunks=1, chunk_bytes=64), timeout=TIMEOUT) for _ in range(200)]
    results = [f.result() for f in futures]
    assert len(results) == 200
    assert all(r.audio == pattern(0, 64) and r.backend == "A" for r in results)


def test_concurrent_streams_one_channel(channel):
    stub = pb_grpc.TTSStub(channel)

    def one(i):
        got = list(stub.SynthesizeStream(req(chunks=10 + i % 5, chunk_bytes=4096), timeout=TIMEOUT))
        return len(got), sum(len(c.audio) for c in got)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    assert results == [(10 + i % 5, (10 + i % 5) * 4096) for i in range(64)]


def test_many_connections(backend):
    # Fresh channels each make their own connection (handshake, SETTINGS, GOAWAY on close).
    for _ in range(20):
        with backend.channel() as ch:
            assert pb_grpc.TTSStub(ch).Synthesize(req(), timeout=TIMEOUT).backend == "A"


def test_large_metadata_continuation(backend):
    # 40 KiB of metadata each way: HEADERS plus CONTINUATION frames, and HPACK literals
    # longer than the dynamic table (grpcio's frames are at most 16 KiB).
    big = "v" * 20_000
    opts = [("grpc.max_metadata_size", 256 * 1024)]
    with grpc.insecure_channel(backend.addr, options=opts) as ch:
        stub = pb_grpc.TTSStub(ch)
        sent = [("x-echo-big1", big), ("x-echo-big2", big.upper())]
        _, call = stub.Synthesize.with_call(req(), metadata=sent, timeout=TIMEOUT)
        for md in (dict(call.initial_metadata()), dict(call.trailing_metadata())):
            assert (md["x-echo-big1"], md["x-echo-big2"]) == (big, big.upper())


def test_more_streams_than_the_limit(channel):
    # The backend allows 256 concurrent streams; grpcio queues the rest until some end.
    stub = pb_grpc.TTSStub(channel)
    streams = [
        stub.SynthesizeStream(req(chunks=3, chunk_interval_ms=100), timeout=TIMEOUT)
        for _ in range(300)
    ]
    assert all(len(list(it)) == 3 for it in streams)


def test_keepalive_pings(backend):
    # grpcio pings every 100 ms and drops the connection if a PING goes unanswered for 200 ms.
    opts = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_timeout_ms", 200),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    with grpc.insecure_channel(backend.addr, options=opts) as ch:
        stub = pb_grpc.TTSStub(ch)
        got = list(stub.SynthesizeStream(req(chunks=6, chunk_interval_ms=120), timeout=TIMEOUT))
        assert len(got) == 6
        time.sleep(0.4)
        assert stub.Synthesize(req(), timeout=TIMEOUT).backend == "A"
