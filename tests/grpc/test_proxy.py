"""corelb between grpcio clients and grpcio servers (the reference gRPC implementation).

Three grpcio servers run in this process (an echo service with all four call types, raw
bytes in and out, plus grpc.health.v1); tts_server.py processes stand in where a server
must be killed. corelb is the real binary (CORELB_BIN), started per test on free loopback
ports with a config naming the servers as h2c.
"""

import os
import signal
import subprocess
import tempfile
import threading
import time
from concurrent import futures

import grpc
import pytest

import stubs
from conftest import Server, tts_server_argv
from stubs import health_lib, health_pb2, health_pb2_grpc, pb, pb_grpc

CORELB = os.environ.get("CORELB_BIN", os.path.join(stubs.ROOT, "target", "debug", "corelb"))
SERVICE = "test.Echo"


def method(name):
    return f"/{SERVICE}/{name}"


class EchoServer:
    """An in-process grpcio server: /test.Echo/{Unary,ClientStream,ServerStream,Bidi,Sleep,Fail}."""

    def __init__(self, sid):
        self.id = sid
        self.cancelled = threading.Event()
        self.calls = 0
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Sleep": grpc.unary_unary_rpc_method_handler(self.sleep),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.health = health_lib.HealthServicer()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _count(self, context):
        with self.lock:
            self.calls += 1
        echo = tuple((k, v) for k, v in context.invocation_metadata() if k.startswith("x-echo"))
        context.send_initial_metadata((("x-backend", self.id),) + echo)
        context.set_trailing_metadata((("x-backend", self.id),) + echo)

    def unary(self, request, context):
        self._count(context)
        return self.id.encode() + b":" + request

    def client_stream(self, requests, context):
        self._count(context)
        total = b"".join(requests)
        return f"{self.id}:{len(total)}:{sum(total) % 65521}".encode()

    def server_stream(self, request, context):
        self._count(context)
        n, size, pause = (int(x) for x in request.decode().split(","))
        # Ended before its last message: cancelled. grpcio may close the generator at a
        # yield on a cancel instead of letting it see is_active(), so a callback tells.
        finished = []
        context.add_callback(lambda: finished or self.cancelled.set())
        for i in range(n):
            if pause:
                time.sleep(pause / 1000)
            if not context.is_active():
                self.cancelled.set()
                return
            yield bytes([97 + i % 26]) * size
        finished.append(True)

    def bidi(self, requests, context):
        self._count(context)
        for r in requests:
            yield self.id.encode() + b":" + r

    def sleep(self, request, context):
        self._count(context)
        context.add_callback(self.cancelled.set)
        deadline = time.monotonic() + float(request.decode())
        while time.monotonic() < deadline and context.is_active():
            time.sleep(0.01)
        return b"slept"

    def fail(self, request, context):
        self._count(context)
        code = getattr(grpc.StatusCode, request.decode())
        context.set_trailing_metadata(
            (("x-backend", self.id), ("grpc-status-details-bin", b"\x08\x05\x12\x03why"))
        )
        context.abort(code, f"failed on purpose on {self.id}")

    def stop(self, grace=None):
        self.server.stop(grace)


class Corelb:
    """The real corelb in front of `ports` (h2c servers named by `names`)."""

    def __init__(self, ports, names=None, extra=(), servers_json=None):
        names = names or [chr(65 + i) for i in range(len(ports))]
        servers = servers_json or ",".join(
            f'{{"name": "{n}", "address": "127.0.0.1", "port": {p}, "protocol": "h2c"}}'
            for n, p in zip(names, ports)
        )
        self.dir = tempfile.TemporaryDirectory()
        self.config = os.path.join(self.dir.name, "corelb.json")
        with open(self.config, "w") as f:
            f.write(
                f'{{"heartbeatInterval": 0.5, "heartbeatTimeout": 0.5, "servers": [{servers}]}}'
            )
        self.csv = os.path.join(self.dir.name, "log.csv")
        argv = [CORELB, "--config", self.config, "--listen", "127.0.0.1:0",
                "--admin", "127.0.0.1:0", "--workers", "1", "--log-csv", self.csv, *extra, *os.environ.get("CORELB_TEST_ARGS", "").split()]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(os.environ.get("CORELB_TEST_STDERR", os.devnull), "w"), text=True)
        self.addr = self.admin = None
        found = threading.Event()

        def read():
            for line in self.proc.stdout:
                if "listening on " in line and not self.addr:
                    self.addr = line.split("listening on ")[1].split()[0]
                if "admin on http://" in line:
                    self.admin = line.split("admin on http://")[1].split("/")[0]
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(15) or not self.addr:
            self.stop()
            raise RuntimeError("corelb did not start: " + self.proc.stderr.read())

    def channel(self):
        return grpc.insecure_channel(self.addr)

    def stats(self):
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://{self.admin}/stats", timeout=5) as r:
            return json.load(r)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def echo_servers():
    servers = [EchoServer(sid) for sid in "ABC"]
    yield servers
    for s in servers:
        s.stop(0)


@pytest.fixture
def lb(echo_servers):
    c = Corelb([s.port for s in echo_servers])
    yield c
    c.stop()


def stubs_for(channel):
    ident = lambda b: b  # noqa: E731 (raw bytes both ways)
    kw = dict(request_serializer=ident, response_deserializer=ident)
    return {
        "unary": channel.unary_unary(method("Unary"), **kw),
        "client": channel.stream_unary(method("ClientStream"), **kw),
        "server": channel.unary_stream(method("ServerStream"), **kw),
        "bidi": channel.stream_stream(method("Bidi"), **kw),
        "sleep": channel.unary_unary(method("Sleep"), **kw),
        "fail": channel.unary_unary(method("Fail"), **kw),
    }


def test_unary_calls_of_one_channel_are_balanced_one_by_one(lb, echo_servers):
    with lb.channel() as ch:
        unary = stubs_for(ch)["unary"]
        with futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: unary(b"%d" % i, timeout=10), range(3000)))
    per = {}
    for a in answers:
        sid = a.split(b":")[0].decode()
        per[sid] = per.get(sid, 0) + 1
    # One HTTP/2 connection, yet every call a pick of its own: thirds within 5%.
    assert sorted(per) == ["A", "B", "C"], per
    for sid, n in per.items():
        assert abs(n - 1000) <= 50, per
    assert [s.calls for s in echo_servers] == [per["A"], per["B"], per["C"]]


def test_all_four_call_types(lb):
    with lb.channel() as ch:
        s = stubs_for(ch)
        assert s["unary"](b"hi", timeout=10).endswith(b":hi")
        chunks = [bytes([i % 251]) * 10_000 for i in range(50)]
        total = b"".join(chunks)
        answer = s["client"](iter(chunks), timeout=10).decode().split(":")
        assert answer[1:] == [str(len(total)), str(sum(total) % 65521)]
        got = list(s["server"](b"200,4096,0", timeout=10))
        assert len(got) == 200 and all(len(g) == 4096 for g in got)
        assert got[27] == b"b" * 4096
        msgs = [b"m%d" % i for i in range(100)]
        replies = list(s["bidi"](iter(msgs), timeout=10))
        sid = replies[0].split(b":")[0]
        assert replies == [sid + b":" + m for m in msgs]


def test_bidi_is_interleaved_not_buffered(lb):
    """Each reply arrives before the next request is sent: nothing waits for the end."""
    with lb.channel() as ch:
        bidi = stubs_for(ch)["bidi"]
        sent = []
        ready = threading.Semaphore(0)

        def requests():
            for i in range(20):
                sent.append(i)
                yield b"%d" % i
                assert ready.acquire(timeout=5), "reply to the previous message did not come"

        for i, reply in enumerate(bidi(requests(), timeout=20)):
            assert reply.endswith(b":%d" % i)
            assert len(sent) == i + 1
            ready.release()


def test_metadata_status_details_and_trailers(lb):
    with lb.channel() as ch:
        s = stubs_for(ch)
        resp, call = s["unary"].with_call(b"x", metadata=(("x-echo-a", "1"),), timeout=10)
        initial = dict(call.initial_metadata())
        trailing = dict(call.trailing_metadata())
        assert initial["x-echo-a"] == "1" and trailing["x-echo-a"] == "1"
        assert initial["x-backend"] == resp.split(b":")[0].decode()
        for code in ("NOT_FOUND", "PERMISSION_DENIED", "INVALID_ARGUMENT", "ALREADY_EXISTS"):
            with pytest.raises(grpc.RpcError) as e:
                s["fail"](code.encode(), timeout=10)
            assert e.value.code() == getattr(grpc.StatusCode, code)
            assert e.value.details().startswith("failed on purpose on ")
            md = dict(e.value.trailing_metadata())
            assert md["grpc-status-details-bin"] == b"\x08\x05\x12\x03why"


def any_set(events, limit=30.0):
    """Whether any of `events` is set within `limit` seconds, all watched at once (waiting
    on each in turn gave the one that matters only a slice of the time on a loaded
    machine)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if any(e.is_set() for e in events):
            return True
        time.sleep(0.02)
    return any(e.is_set() for e in events)


def test_deadline_cancels_upstream_and_answers_deadline_exceeded(lb, echo_servers):
    with lb.channel() as ch:
        sleep = stubs_for(ch)["sleep"]
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            sleep(b"5", timeout=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 2
    # The server saw its call cancelled (corelb reset the upstream stream), not run 5 s.
    assert any_set([s.cancelled for s in echo_servers]), "server saw the cancel"


def test_client_cancel_reaches_the_server(lb, echo_servers):
    with lb.channel() as ch:
        stream = stubs_for(ch)["server"](b"1000,100,20", timeout=30)
        got = [next(stream) for _ in range(3)]
        assert len(got) == 3
        stream.cancel()
    assert any_set([s.cancelled for s in echo_servers]), "server saw the cancel"
    # corelb is fine afterwards.
    with lb.channel() as ch:
        assert stubs_for(ch)["unary"](b"after", timeout=10).endswith(b":after")


def test_no_server_reachable_is_unavailable():
    with socket_port() as dead:
        c = Corelb([dead], names=["gone"])
        try:
            with c.channel() as ch:
                with pytest.raises(grpc.RpcError) as e:
                    stubs_for(ch)["unary"](b"x", timeout=10)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
                assert e.value.details()
        finally:
            c.stop()


class socket_port:
    """A loopback port with nothing listening."""

    def __enter__(self):
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *a):
        return False


def tts_stub(c):
    ch = c.channel()
    return ch, pb_grpc.TTSStub(ch)


def test_server_killed_mid_stream_fails_that_call_only(start_server):
    servers = [start_server(tts_server_argv(id=sid)) for sid in "PQ"]
    c = Corelb([s.port for s in servers], names=["P", "Q"])
    try:
        ch, tts = tts_stub(c)
        req = pb.SynthesizeRequest(text="long", chunks=1000, chunk_bytes=100, chunk_interval_ms=10)
        stream = tts.SynthesizeStream(req, timeout=30)
        first = next(stream)
        victim = next(s for s in servers if first.backend == s.argv[s.argv.index("--id") + 1])
        os.kill(victim.proc.pid, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as e:
            for _ in stream:
                pass
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), e.value
        # Other calls keep working (on the other server, once the dead one is noticed).
        ok = 0
        for _ in range(20):
            try:
                tts.Synthesize(pb.SynthesizeRequest(text="x"), timeout=5)
                ok += 1
            except grpc.RpcError:
                pass
        assert ok >= 18, ok
        ch.close()
    finally:
        c.stop()


class CallLoad:
    """`n` threads making unary Synthesize calls through corelb `c` until `stop()`:
    `done[0]` counts the calls that succeeded, `errors` the (code, details) of the rest."""

    def __init__(self, c, n):
        self.c, self.done, self.errors = c, [0], []
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(n)]
        for t in self._threads:
            t.start()

    def _run(self):
        ch, tts = tts_stub(self.c)
        while not self._stop.is_set():
            try:
                tts.Synthesize(pb.SynthesizeRequest(text="x"), timeout=10)
                with self._lock:
                    self.done[0] += 1
            except grpc.RpcError as e:
                self.errors.append((e.code(), e.details()))
        ch.close()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(20)


def test_graceful_restart_of_a_server_loses_no_call(start_server):
    """64 calls in flight over three servers; one is stopped (SIGTERM: GOAWAY, in-flight
    calls finish) and started again on its port. No call fails that corelb could move
    (calls above the GOAWAY's last stream and connect failures go to the others); the
    server leaves within heartbeatInterval x fall and comes back after rise."""
    servers = [start_server(tts_server_argv("--delay-ms", "5", id=sid)) for sid in "PQR"]
    c = Corelb([s.port for s in servers], names=["P", "Q", "R"],
               extra=("--fall", "3", "--rise", "2"))
    load = CallLoad(c, 64)

    def health(name):
        return next(b["health"] for b in c.stats()["backends"] if b["name"] == name)

    def state(name):
        return health(name)["state"]

    def wait_state(name, want, limit):
        start = time.monotonic()
        while time.monotonic() - start < limit:
            if state(name) in want:
                return time.monotonic() - start
            time.sleep(0.05)
        return None

    try:
        time.sleep(1)
        victim = servers[1]
        port = victim.port
        victim.proc.send_signal(signal.SIGTERM)
        victim.proc.wait(10)
        # heartbeatInterval 0.5 s x fall 3, plus a check's timeout.
        # Out at once by its failed calls (ejected), and by its checks within
        # heartbeatInterval x fall (0.5 s x 3, plus a check's timeout).
        out = wait_state("Q", ("down", "ejected"), 3.0)
        assert out is not None, c.stats()["backends"]
        start = time.monotonic()
        while not health("Q")["checked_down"] and time.monotonic() - start < 3.0:
            time.sleep(0.05)
        left = time.monotonic() - start + out
        assert health("Q")["checked_down"], health("Q")
        assert left < 0.5 * 3 + 0.5 + 0.5, left
        start_server(tts_server_argv("--delay-ms", "5", "--port", str(port), id="Q"))
        # Back after rise (2 checks at 0.5 s): the checks also end its ejection.
        back = wait_state("Q", ("up",), 5.0)
        assert back is not None and back < 0.5 * 2 + 1.0, (back, health("Q"))
        time.sleep(1)
    finally:
        load.stop()
        c.stop()
    errors, done = load.errors, load.done
    print(f"graceful restart: {done[0]} calls, {len(errors)} failed, Q ejected after {out:.2f} s,"
          f" checked down after {left:.2f} s, up again {back:.2f} s after its restart")
    assert done[0] > 500, done
    # grpcio's server answers CANCELLED (grpc-status 1, its own Trailers-Only answer) to
    # some calls it had accepted when it began to shut down; corelb forwards them as it
    # must (they may have been processed). Nothing else fails: corelb's own failures
    # would be UNAVAILABLE, INTERNAL or DEADLINE_EXCEEDED. At most the calls in flight.
    assert all(code == grpc.StatusCode.CANCELLED for code, _ in errors), errors[:5]
    assert len(errors) <= 64, errors


def test_calls_are_accounted_by_status_in_metrics_stats_and_csv(echo_servers):
    c = Corelb([s.port for s in echo_servers], extra=("--eject-after", "0"))
    try:
        with c.channel() as ch:
            s = stubs_for(ch)
            for _ in range(30):
                s["unary"](b"x", timeout=10)
            for _ in range(6):
                with pytest.raises(grpc.RpcError):
                    s["fail"](b"NOT_FOUND", timeout=10)
        import urllib.request

        deadline = time.monotonic() + 5
        while True:
            with urllib.request.urlopen(f"http://{c.admin}/metrics", timeout=5) as r:
                metrics = r.read().decode()
            lines = [l for l in metrics.splitlines() if l.startswith("corelb_grpc_calls_total{")]
            total = lambda st: sum(  # noqa: E731
                float(l.rsplit(" ", 1)[1]) for l in lines if f'status="{st}"' in l
            )
            if total(0) == 30 and total(5) == 6 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert total(0) == 30, lines
        assert total(5) == 6, lines
        assert any('method="/test.Echo/Unary"' in l for l in lines), lines
        stats = c.stats()
        calls = sum(b["grpc"]["calls"] for b in stats["backends"])
        errors = sum(b["grpc"]["errors"] for b in stats["backends"])
        assert (calls, errors) == (36, 6), stats["backends"]
    finally:
        c.stop()
    import csv

    with open(c.csv) as f:
        rows = list(csv.DictReader(f))
    statuses = sorted(r["grpc_status"] for r in rows)
    assert statuses.count("0") == 30 and statuses.count("5") == 6, statuses


def test_unavailable_moves_the_call_and_ejects_the_server(echo_servers):
    """A server answering UNAVAILABLE (Trailers-Only) sends the call elsewhere, and its
    repeated UNAVAILABLEs eject it; when every server says so, the client gets the
    server's own status and message."""
    bad = EchoServer("X")
    try:
        # X answers every Unary with UNAVAILABLE.
        bad.unary = None
        handlers = {"Unary": grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: ctx.abort(grpc.StatusCode.UNAVAILABLE, "X is unwell"))}
        bad.server.stop(0)
        bad.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        bad.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        health_pb2_grpc.add_HealthServicer_to_server(bad.health, bad.server)
        bad.port = bad.server.add_insecure_port("127.0.0.1:0")
        bad.server.start()
        c = Corelb([bad.port, echo_servers[0].port], names=["X", "A"],
                   extra=("--retry-budget", "100"))
        try:
            with c.channel() as ch:
                unary = stubs_for(ch)["unary"]
                for i in range(20):
                    assert unary(b"%d" % i, timeout=10).startswith(b"A:")
            state = {b["name"]: b["health"]["state"] for b in c.stats()["backends"]}
            assert state["X"] == "ejected", state
        finally:
            c.stop()
        c = Corelb([bad.port], names=["X"])
        try:
            with c.channel() as ch:
                with pytest.raises(grpc.RpcError) as e:
                    stubs_for(ch)["unary"](b"x", timeout=10)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
                assert e.value.details() == "X is unwell"
        finally:
            c.stop()
    finally:
        bad.stop(0)


def test_kill_under_load_with_a_retry_policy_fails_no_call(start_server):
    """32 unary calls in flight over three servers; one is SIGKILLed (the calls in flight
    on it are lost after their requests went out) and started again on its port. With
    `--retry-on reset,unavailable` every such call is replayed on another server: no call
    fails, and /stats counts the replays only the policy allowed."""
    servers = [start_server(tts_server_argv("--delay-ms", "5", id=sid)) for sid in "PQR"]
    c = Corelb([s.port for s in servers], names=["P", "Q", "R"],
               extra=("--retry-on", "reset,unavailable"))
    load = CallLoad(c, 32)
    done = load.done
    try:
        # Until calls flow, then the kill, then the same server again on its port.
        end = time.monotonic() + 10
        while done[0] < 200 and time.monotonic() < end:
            time.sleep(0.02)
        victim = servers[1]
        port = victim.port
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        before = done[0]
        end = time.monotonic() + 10
        while done[0] < before + 300 and time.monotonic() < end:
            time.sleep(0.02)
        start_server(tts_server_argv("--delay-ms", "5", "--port", str(port), id="Q"))
        before = done[0]
        end = time.monotonic() + 10
        while done[0] < before + 300 and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        load.stop()
        totals = c.stats()["totals"]
        replayed = totals["policy_retries"]
        c.stop()
    print(f"kill under load with a retry policy: {done[0]} calls, {len(load.errors)} failed,"
          f" {replayed} replayed by the policy")
    assert done[0] > 600, done
    assert load.errors == [], load.errors[:5]
    assert replayed >= 1, "the kill met calls in flight"
