#!/usr/bin/env python3
"""HTTP/2 and gRPC benchmark harness behind `make bench-h2` and `make bench-h2-quick`.

h2load (nghttp2-client) sends gRPC-shaped unary calls (`POST /tts.TTS/Synthesize`, a
5-byte gRPC prefix plus a small tts.SynthesizeRequest, `content-type: application/grpc`,
`te: trailers`) over h2c with prior knowledge to `corelb-backend --protocol grpc` directly,
to corelb (servers with `"protocol": "h2c"`), to NGINX (`listen ... http2`, `grpc_pass`) and
to HAProxy (`bind ... proto h2`, `server ... proto h2`), on loopback ports 18200-18299.
Before a target's first run, one call through it with `nghttp -v` must end with
`grpc-status: 0` (h2load itself only sees HTTP statuses).

Two scenarios, targets in rotated order in every repetition, medians over repetitions:
  throughput  3 `fast` gRPC backends, 1 worker/thread per proxy: rps, p50/p99 (from
              h2load's --log-file per-request timings), the proxy's CPU per call (user +
              system ticks of its processes from /proc), ratios corelb/NGINX, corelb/HAProxy
  routing     backends A, B, C with the seed's latency profiles; corelb round-robin,
              adaptive_ewma, adaptive_sma; NGINX round robin and least_conn, HAProxy
              leastconn: throughput ratio adaptive / round-robin, p99, traffic shares

Writes bench/results/<date>-<host>-h2[-quick][-<only>]/: summary.md, results.json,
commands.txt and raw/ (h2load outputs, process logs, generated configs; gitignored).
Reuses bench/bench.py's process supervisor, port, /proc CPU and machine helpers.
Stdlib only. Every process it starts runs in its own session and is stopped on exit,
error or Ctrl-C; every h2load run is bounded in time.
"""

import argparse
import atexit
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402  (bench/bench.py: Supervisor, ports, proc_cpu, machine_info)

ROOT, BENCH, BACKEND, CORELB = B.ROOT, B.BENCH, B.BACKEND, B.CORELB
HOST = B.HOST
PORT_RANGE = range(18200, 18300)
FULL_SECONDS = 20
QUICK_SECONDS = 3
PAUSE_BETWEEN_RUNS = 0.3
GRPC_PATH = "/tts.TTS/Synthesize"
GRPC_HEADERS = ["content-type: application/grpc", "te: trailers"]
# The request: text "hello", voice "bench", one chunk of 128 bytes of audio back.
REQUEST_FIELDS = {"text": "hello", "voice": "bench", "chunks": 1, "chunk_bytes": 128}
SCENARIO_KEYS = ["throughput", "routing"]


def log(msg: str) -> None:
    print(f"h2bench: {msg}", flush=True)


# ---------------------------------------------------------------------------------------
# The gRPC request body, encoded by hand (protobuf wire format, proto3).


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def synthesize_request(text: str, voice: str, chunks: int, chunk_bytes: int) -> bytes:
    """A tts.SynthesizeRequest (backend/proto/tts.proto) in a gRPC length-prefixed frame:
    1 byte compressed flag (0), 4 bytes big-endian length, the message."""
    msg = b""
    for num, s in ((1, text), (2, voice)):
        raw = s.encode()
        msg += varint(num << 3 | 2) + varint(len(raw)) + raw
    for num, v in ((3, chunks), (4, chunk_bytes)):
        msg += varint(num << 3 | 0) + varint(v)
    return b"\x00" + struct.pack(">I", len(msg)) + msg


# ---------------------------------------------------------------------------------------
# Scenarios.


@dataclass
class Target:
    name: str
    kind: str  # direct | corelb | nginx | haproxy
    mode: str = ""  # corelb mode, NGINX balance directive, HAProxy balance algorithm


@dataclass
class Scenario:
    key: str
    title: str
    about: str
    backends: list  # B.Backend
    clients: int  # h2load -c
    streams: int  # h2load -m
    reps: int
    targets: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    error: str = ""


def build_scenarios(reps: int, only: Optional[set]) -> list:
    tp = Scenario(
        key="throughput", title="Throughput and CPU: 3 fast gRPC backends, 1 worker each",
        about="3 backends `--protocol grpc --profile fast` (direct: the first one alone); "
              "corelb `--workers 1 --no-pin --log-csv off --admin off` round-robin, servers "
              "`\"protocol\": \"h2c\"`; NGINX 1 worker, `listen ... http2`, `grpc_pass`, "
              "upstream `keepalive 256`; HAProxy `nbthread 1`, `proto h2` both sides, "
              "`balance roundrobin`, `http-reuse always`; `h2load -t1 -c10 -m32` "
              "(320 calls in flight, the HTTP/2 issue's load)",
        backends=[B.Backend(i, "fast") for i in ("F1", "F2", "F3")],
        clients=10, streams=32, reps=reps)
    tp.notes.append("NGINX's gRPC proxy carries one call per upstream connection (no HTTP/2 "
                    "multiplexing towards the backends), so it holds about as many backend "
                    "connections as calls in flight; corelb and HAProxy multiplex the calls "
                    "over a handful (about one per backend per worker/thread). The direct row's "
                    "connections are h2load's 10 and the nghttp check's.")
    tp.targets = [Target("direct", "direct"), Target("corelb", "corelb", "round-robin"),
                  Target("nginx", "nginx", ""), Target("haproxy", "haproxy", "roundrobin")]
    rt = Scenario(
        key="routing", title="gRPC routing: the seed's latencies (A, B, C)",
        about="backends A, B, C `--protocol grpc --profile seed` (A cycles 10, 15, 20, 400, "
              "400, 400, 10, 15, 20 ms; B 200 ms; C 250 ms); corelb `--workers 1 --no-pin "
              "--log-csv off --admin off`; NGINX 1 worker `grpc_pass` (round robin, "
              "`least_conn`); HAProxy `nbthread 1` `balance leastconn`; `h2load -t1 -c4 -m25` "
              "(100 calls in flight, the seed's 100 connections)",
        backends=[B.Backend(i, "seed") for i in "ABC"], clients=4, streams=25, reps=reps)
    rt.targets = [Target("corelb round-robin", "corelb", "round-robin"),
                  Target("corelb adaptive_ewma", "corelb", "adaptive_ewma"),
                  Target("corelb adaptive_sma", "corelb", "adaptive_sma"),
                  Target("nginx round-robin", "nginx", ""),
                  Target("nginx least_conn", "nginx", "least_conn;"),
                  Target("haproxy leastconn", "haproxy", "leastconn")]
    return [s for s in (tp, rt) if only is None or s.key in only]


def corelb_config(backends: list, ports: list) -> str:
    servers = [{"priority": 0, "name": b.id, "address": HOST, "port": p, "load": 1,
                "protocol": "h2c"} for b, p in zip(backends, ports)]
    return json.dumps({"_note": "written by bench/h2bench.py", "heartbeatInterval": 2,
                       "heartbeatTimeout": 1, "servers": servers}, indent=2) + "\n"


def take_ports(n: int) -> list:
    free = [p for p in PORT_RANGE if B.port_free(p)][:n]
    if len(free) < n:
        raise B.BenchError(f"need {n} free ports in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")
    return free


def percentile(sorted_vals: list, p: float) -> Optional[float]:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-p * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def parse_duration(s: str) -> float:
    """h2load's durations ("28.97ms", "3.00s", "295us") in seconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", s.strip())
    if not m:
        raise ValueError(s)
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]


# ---------------------------------------------------------------------------------------
# Running.


class H2Bench:
    def __init__(self, out: Path, seconds: int, requests: Optional[int], corelb: Path,
                 tools: dict, sup: "B.Supervisor", payload: Path):
        self.out = out
        self.raw = out / "raw"
        self.seconds = seconds
        self.requests = requests  # h2load -n instead of -D
        self.corelb = corelb
        self.tools = tools
        self.sup = sup
        self.payload = payload
        self.runs: list = []
        self.verified: dict = {}  # target name -> the check's result
        self.first_cmds: dict = {}  # (scenario, target) -> commands of its first run

    # -- processes ----------------------------------------------------------------------

    def start_backends(self, sc: Scenario, ports: list, run_dir: Path) -> list:
        """Fresh backends for every run: their exit line counts that run's calls."""
        started = []
        try:
            for b, port in zip(sc.backends, ports):
                B.wait_free(port)
                lf = run_dir / f"backend-{b.id}.log"
                p = self.sup.start([BACKEND, "--protocol", "grpc", "--port", port, "--id", b.id,
                                    "--profile", b.profile, *b.extra], lf)
                started.append((b, p, lf))
                B.wait_listening(port, p, lf)
        except B.BenchError:
            self.stop_backends(started)
            raise
        return started

    def stop_backends(self, started: list) -> dict:
        """Stops them (SIGTERM: they print their totals) and returns {id: totals}."""
        totals = {}
        for b, p, lf in started:
            self.sup.stop(p, signal.SIGTERM, 5.0)
            for line in reversed(lf.read_text(errors="replace").splitlines()):
                if line.startswith("{") and '"requests"' in line:
                    try:
                        totals[b.id] = json.loads(line)
                    except ValueError:
                        pass
                    break
        return totals

    def launch(self, sc: Scenario, t: Target, run_dir: Path, ports: list,
               proxy_port: int) -> tuple:
        """Starts the proxy; returns (port, Popen or None, log file)."""
        if t.kind == "direct":
            return ports[0], None, None
        B.wait_free(proxy_port)
        if t.kind == "corelb":
            cfg = run_dir / "corelb.json"
            cfg.write_text(corelb_config(sc.backends, ports))
            argv = [self.corelb, "--mode", t.mode, "--config", cfg, "--listen",
                    f"{HOST}:{proxy_port}", "--workers", 1, "--no-pin", "--log-csv", "off",
                    "--admin", "off", "--drain-timeout", "5s"]
        elif t.kind == "nginx":
            (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
            servers = "\n".join(f"        server {HOST}:{p};" for p in ports)
            conf = Template((BENCH / "nginx-grpc.conf.tmpl").read_text()).substitute(
                workers=1, dir=run_dir, port=proxy_port, servers=servers,
                balance=t.mode or "# round robin (the default)")
            (run_dir / "nginx.conf").write_text(conf)
            argv = ["nginx", "-c", run_dir / "nginx.conf", "-e", run_dir / "error.log"]
        elif t.kind == "haproxy":
            servers = "\n".join(f"    server {b.id} {HOST}:{p} proto h2"
                                for b, p in zip(sc.backends, ports))
            cfg = Template((BENCH / "haproxy-h2.cfg.tmpl").read_text()).substitute(
                threads=1, dir=run_dir, port=proxy_port, servers=servers, balance=t.mode)
            (run_dir / "haproxy.cfg").write_text(cfg)
            argv = ["haproxy", "-db", "-f", run_dir / "haproxy.cfg"]
        else:
            raise B.BenchError(f"unknown target kind {t.kind}")
        lf = run_dir / f"{t.kind}.log"
        p = self.sup.start(argv, lf)
        try:
            B.wait_listening(proxy_port, p, lf)
        except B.BenchError:
            self.sup.stop(p)
            raise
        return proxy_port, p, lf

    # -- the gRPC check -------------------------------------------------------------------

    def verify(self, port: int, run_dir: Path) -> dict:
        """One call with `nghttp -v`: HTTP status, grpc-status (trailers) and x-backend."""
        argv = ["nghttp", "-v", "-d", self.payload]
        for h in GRPC_HEADERS:
            argv += ["-H", h]
        argv.append(f"http://{HOST}:{port}{GRPC_PATH}")
        argv = [str(a) for a in argv]
        self.sup.record(argv)
        try:
            r = subprocess.run(argv, capture_output=True, timeout=15, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise B.BenchError("gRPC check: nghttp got no answer in 15 s")
        text = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        (run_dir / "nghttp-check.txt").write_text(text)
        grab = lambda name: re.findall(  # noqa: E731
            rf"recv \(stream_id=\d+\) {re.escape(name)}: (\S+)", text)
        res = {"cmd": shlex.join(argv), "http_status": (grab(":status") or [None])[0],
               "grpc_status": (grab("grpc-status") or [None])[-1],
               "grpc_message": (grab("grpc-message") or [None])[-1],
               "x_backend": (grab("x-backend") or [None])[0], "nghttp_exit": r.returncode}
        if res["http_status"] != "200" or res["grpc_status"] != "0":
            raise B.BenchError(
                f"gRPC check failed: :status {res['http_status']}, grpc-status "
                f"{res['grpc_status']}, grpc-message {res['grpc_message']}, nghttp exit "
                f"{r.returncode}: {B.tail(run_dir / 'nghttp-check.txt', 4)}")
        return res

    # -- one h2load run ---------------------------------------------------------------------

    def h2load(self, sc: Scenario, port: int, run_dir: Path) -> dict:
        logfile = run_dir / "h2load-requests.log"
        logfile.unlink(missing_ok=True)  # h2load appends
        argv = ["h2load", "-t1", f"-c{sc.clients}", f"-m{sc.streams}"]
        argv += [f"-n{self.requests}"] if self.requests else ["-D", str(self.seconds)]
        argv += ["-d", self.payload]
        for h in GRPC_HEADERS:
            argv += ["-H", h]
        argv += ["--log-file", logfile, f"http://{HOST}:{port}{GRPC_PATH}"]
        outfile = run_dir / "h2load.txt"
        p = self.sup.start(argv, outfile)
        limit = (self.seconds if not self.requests else 120) + 30
        try:
            p.wait(limit)
        except subprocess.TimeoutExpired:
            raise B.BenchError(f"h2load did not finish in {limit} s")
        finally:
            self.sup.stop(p)
        text = outfile.read_text(errors="replace")
        m_fin = re.search(r"finished in (\S+), ([\d.]+) req/s", text)
        m_req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                          r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
        m_st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
        m_t = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
        if not (m_fin and m_req and m_st):
            raise B.BenchError(f"h2load exited {p.returncode} without a report: {B.tail(outfile)}")
        finished = parse_duration(m_fin.group(1).rstrip(","))
        total, started, done, ok, failed, errored, timeout = map(int, m_req.groups())
        # The per-request log: start (us since the epoch), HTTP status, duration (us).
        durs = []
        statuses: dict = {}
        if logfile.exists():
            with open(logfile, errors="replace") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3:
                        statuses[parts[1]] = statuses.get(parts[1], 0) + 1
                        if parts[1].startswith("2"):
                            durs.append(int(parts[2]))
            logfile.unlink()  # millions of lines in a full run; the percentiles stay
        durs.sort()
        ms = lambda us: None if us is None else us / 1000.0  # noqa: E731
        secs = float(self.seconds) if not self.requests else finished
        return {
            "cmd": shlex.join(str(a) for a in argv),
            "h2load_out": B.rel(outfile, self.out),
            "seconds": secs, "finished_s": finished,
            "requests": ok, "total": total, "started": started, "done": done,
            "failed": failed, "errored": errored, "timeout": timeout,
            "status_2xx": int(m_st.group(1)),
            "status_non2xx": sum(int(x) for x in m_st.groups()[1:]),
            "rps": ok / secs if secs else 0.0,
            "h2load_rps": float(m_fin.group(2)),
            "h2load_time_for_request": list(m_t.groups()) if m_t else None,
            "log_statuses": statuses, "log_count": len(durs),
            "latency_ms": {"mean": ms(statistics.fmean(durs)) if durs else None,
                           "p50": ms(percentile(durs, 50)), "p90": ms(percentile(durs, 90)),
                           "p99": ms(percentile(durs, 99)),
                           "p99.9": ms(percentile(durs, 99.9)),
                           "max": ms(durs[-1] if durs else None)},
        }

    def run_one(self, sc: Scenario, t: Target, rep: int, ports: list, proxy_port: int) -> dict:
        run_dir = self.raw / sc.key / f"{B.slug(t.name)}-r{rep + 1}"
        run_dir.mkdir(parents=True, exist_ok=True)
        res = {"scenario": sc.key, "target": t.name, "kind": t.kind, "mode": t.mode,
               "rep": rep + 1, "ok": False, "error": "", "notes": [],
               "dir": B.rel(run_dir, self.out)}
        cmds_before = len(self.sup.commands)
        backends, proc, lf = [], None, None
        t0 = time.monotonic()
        try:
            unavailable = self.tools.get(t.kind)
            if unavailable:
                raise B.BenchError(unavailable)
            backends = self.start_backends(sc, ports, run_dir)
            port, proc, lf = self.launch(sc, t, run_dir, ports, proxy_port)
            if t.name not in self.verified:
                self.verified[t.name] = self.verify(port, run_dir)
                res["grpc_check"] = self.verified[t.name]
            cpu0 = B.proc_cpu(proc.pid) if proc else None
            bcpu0 = [B.proc_cpu(p.pid) for _, p, _ in backends]
            res.update(self.h2load(sc, port, run_dir))
            cpu1 = B.proc_cpu(proc.pid) if proc else None
            bcpu1 = [B.proc_cpu(p.pid) for _, p, _ in backends]
            n = res["requests"]
            if cpu0 and cpu1 and n:
                res["cpu_us"] = {"user": (cpu1[0] - cpu0[0]) / n * 1e6,
                                 "system": (cpu1[1] - cpu0[1]) / n * 1e6}
            if n and None not in bcpu0 + bcpu1:
                res["backend_cpu_us"] = sum(b1[0] + b1[1] - b0[0] - b0[1]
                                            for b0, b1 in zip(bcpu0, bcpu1)) / n * 1e6
            res["ok"] = n > 0
            if not n:
                res["error"] = "no successful calls"
        except B.BenchError as e:
            res["error"] = str(e)
        except Exception as e:  # a harness bug fails this run, not the bench
            res["error"] = f"{type(e).__name__}: {e}"
        finally:
            if proc is not None:
                rc = self.sup.stop(proc, signal.SIGTERM, 10.0)
                if rc != 0 and not (t.kind != "corelb" and rc == -signal.SIGTERM):
                    res["notes"].append(f"{t.kind} exit code {rc} after stop: {B.tail(lf)}")
            totals = self.stop_backends(backends)
        if totals:
            res["backend_calls"] = {i: v.get("requests") for i, v in totals.items()}
            # Connections that carried at least one call (not the port probes).
            res["backend_conns"] = {i: v.get("connections") for i, v in totals.items()}
        res["wall_s"] = round(time.monotonic() - t0, 2)
        self.first_cmds.setdefault((sc.key, t.name), self.sup.commands[cmds_before:])
        self.runs.append(res)
        return res

    def run_scenario(self, sc: Scenario, ports: list, proxy_port: int,
                     progress: Callable) -> None:
        (self.raw / sc.key).mkdir(parents=True, exist_ok=True)
        log(f"scenario {sc.key}: {sc.title}")
        n = len(sc.targets)
        for rep in range(sc.reps):
            # Rotated order: every target takes every place over the repetitions.
            for t in sc.targets[rep % n:] + sc.targets[:rep % n]:
                r = self.run_one(sc, t, rep, ports[:len(sc.backends)], proxy_port)
                progress(sc, t, rep, r)
                time.sleep(PAUSE_BETWEEN_RUNS)


# ---------------------------------------------------------------------------------------
# Summary.


def med(runs: list, get: Callable) -> Optional[float]:
    return B.median_of(runs, get)


def aggregate(runs: list) -> dict:
    ok = [r for r in runs if r["ok"]]
    a = {"n": len(runs), "ok": len(ok), "errors": [r["error"] for r in runs if not r["ok"]]}
    if not ok:
        return a
    a["rps"] = med(ok, lambda r: r["rps"])
    a["rps_min"], a["rps_max"] = min(r["rps"] for r in ok), max(r["rps"] for r in ok)
    for k in ("mean", "p50", "p90", "p99", "p99.9", "max"):
        a[k] = med(ok, lambda r, k=k: r["latency_ms"][k])
    a["cpu_user"] = med(ok, lambda r: r.get("cpu_us", {}).get("user"))
    a["cpu_system"] = med(ok, lambda r: r.get("cpu_us", {}).get("system"))
    a["cpu"] = med(ok, lambda r: (r["cpu_us"]["user"] + r["cpu_us"]["system"])
                   if r.get("cpu_us") else None)
    a["backend_cpu"] = med(ok, lambda r: r.get("backend_cpu_us"))
    a["bad"] = med(ok, lambda r: r["failed"] + r["errored"] + r["timeout"] + r["status_non2xx"])
    a["requests"] = med(ok, lambda r: r["requests"])
    a["backend_calls"] = med(ok, lambda r: sum(r["backend_calls"].values())
                             if r.get("backend_calls") else None)
    a["upstream_conns"] = med(ok, lambda r: sum(r["backend_conns"].values())
                              if r.get("backend_conns") else None)
    shares = [r["backend_calls"] for r in ok if r.get("backend_calls")]
    if shares:
        a["share"] = {i: statistics.median(100.0 * s[i] / max(1, sum(s.values()))
                                           for s in shares) for i in shares[0]}
    return a


f_ms = B.fmt_ms


def f_num(v: Optional[float], digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def ratio(a: Optional[float], b: Optional[float]) -> str:
    return B.ratio(a, b)


def cpu_cell(a: dict) -> str:
    if a.get("cpu") is None:
        return "-"
    return f"{a['cpu']:.2f} ({a['cpu_user']:.2f} + {a['cpu_system']:.2f})"


def status_cell(a: dict) -> str:
    if not a.get("ok"):
        return "FAILED: " + "; ".join(a["errors"])[:300]
    return f"{a['ok']}/{a['n']}"


def throughput_tables(sc: Scenario, aggs: dict) -> list:
    L = B.table_head(["target", "calls/s", "p50 ms", "p99 ms", "p99.9 ms",
                      "proxy CPU µs/call (user + sys)", "backends CPU µs/call",
                      "conns to backends", "bad calls", "runs ok"])
    for t in sc.targets:
        a = aggs[t.name]
        L.append(B.table_row([t.name, f_num(a.get("rps")), f_ms(a.get("p50")),
                              f_ms(a.get("p99")), f_ms(a.get("p99.9")), cpu_cell(a),
                              f_num(a.get("backend_cpu"), 2), f_num(a.get("upstream_conns")),
                              f_num(a.get("bad")), status_cell(a)]))
    c, n, h, d = (aggs.get(k, {}) for k in ("corelb", "nginx", "haproxy", "direct"))
    L += ["", "Ratios (medians; calls/s: higher is better for corelb; p99 and CPU: lower is "
          "better):", ""]
    L += B.table_head(["", "calls/s", "p99", "CPU per call"])
    L.append(B.table_row(["corelb / NGINX", ratio(c.get("rps"), n.get("rps")),
                          ratio(c.get("p99"), n.get("p99")), ratio(c.get("cpu"), n.get("cpu"))]))
    L.append(B.table_row(["corelb / HAProxy", ratio(c.get("rps"), h.get("rps")),
                          ratio(c.get("p99"), h.get("p99")), ratio(c.get("cpu"), h.get("cpu"))]))
    L.append(B.table_row(["corelb / direct", ratio(c.get("rps"), d.get("rps")),
                          ratio(c.get("p99"), d.get("p99")), "-"]))
    return L


def routing_tables(sc: Scenario, aggs: dict) -> list:
    ids = [b.id for b in sc.backends]
    rr = aggs.get("corelb round-robin", {})
    L = B.table_head(["target", "calls/s", "mean ms", "p50 ms", "p99 ms",
                      f"traffic {'/'.join(ids)} %", "vs corelb RR (calls/s)",
                      "vs corelb RR (p99)", "bad calls", "runs ok"])
    for t in sc.targets:
        a = aggs[t.name]
        share = "/".join(f"{a['share'][i]:.0f}" for i in ids) if a.get("share") else "-"
        L.append(B.table_row([t.name, f_num(a.get("rps")), f_ms(a.get("mean")),
                              f_ms(a.get("p50")), f_ms(a.get("p99")), share,
                              ratio(a.get("rps"), rr.get("rps")), ratio(a.get("p99"), rr.get("p99")),
                              f_num(a.get("bad")), status_cell(a)]))
    L += ["", "Adaptive against round-robin (goal: calls/s >= 1.25x):", ""]
    for m in ("adaptive_ewma", "adaptive_sma"):
        a = aggs.get(f"corelb {m}", {})
        r = a.get("rps") / rr["rps"] if a.get("rps") and rr.get("rps") else None
        verdict = "-" if r is None else ("met" if r >= 1.25 else "NOT met")
        L.append(f"- corelb {m} / round-robin: calls/s {f_num(r, 2)} ({verdict}), p99 "
                 f"{ratio(a.get('p99'), rr.get('p99'))}; against NGINX least_conn: "
                 f"{ratio(a.get('rps'), aggs.get('nginx least_conn', {}).get('rps'))}, "
                 f"HAProxy leastconn: "
                 f"{ratio(a.get('rps'), aggs.get('haproxy leastconn', {}).get('rps'))}")
    return L


def short_cmd(c: str, out: Path) -> str:
    return c.replace(str(out / "raw"), "$RAW").replace(str(ROOT), "$ROOT")


def write_summary(out: Path, info: dict, settings: dict, scenarios: list, hb: H2Bench,
                  notes: list, interrupted: bool) -> None:
    L = [f"# corelb HTTP/2 and gRPC benchmark, {settings['date']}", ""]
    if settings["quick"]:
        L += ["**Quick run: a functional check, not a measurement.** 1 repetition of "
              f"{settings['seconds']} s per target (load average at the start "
              f"{info.get('loadavg_start')} on {info.get('nproc')} cores: the load generator, "
              "backends and proxies share them with whatever else runs). The figures are "
              "noisy; use `make bench-h2` on a quiet machine for numbers.", ""]
    if interrupted:
        L += ["**Interrupted: the tables hold only the runs that finished.**", ""]
    L += [f"Invocation: `{settings['invocation']}`; {settings['reps']} repetition(s), "
          + (f"`-n {settings['requests']}` calls" if settings.get("requests")
             else f"{settings['seconds']} s") + " per h2load run, targets in rotated order "
          "each repetition, medians over repetitions; "
          f"{settings.get('elapsed', 0) / 60:.1f} min in all.", "",
          "Every call: `POST /tts.TTS/Synthesize` over h2c (prior knowledge), a 5-byte gRPC "
          f"prefix plus a tts.SynthesizeRequest {json.dumps(REQUEST_FIELDS)} "
          f"({settings['payload_bytes']} bytes, `raw/request.bin`), headers "
          + ", ".join(f"`{h}`" for h in GRPC_HEADERS) + ". Latency percentiles come from "
          "h2load's `--log-file` (every successful call's time), CPU per call from "
          "/proc/PID/stat user + system ticks of the proxy's processes (NGINX: master and "
          "workers) while h2load ran, divided by the successful calls (10 ms ticks: +-0.01 s "
          "per run). 'bad calls' counts h2load's failed, errored, timed-out and non-2xx calls; "
          "'conns to backends' (connections that carried calls), 'backends CPU' and the "
          "traffic shares come from the backends' own counters and /proc (they are started "
          "fresh for every run). Before a target's first run, one call "
          "through it with `nghttp -v` must answer `:status 200` with `grpc-status: 0` "
          "(h2load only sees HTTP statuses).", ""]
    L += ["## Machine", ""]
    for k, v in info.items():
        L.append(f"- {k}: {v}")
    L.append("")
    by = {}
    for r in hb.runs:
        by.setdefault((r["scenario"], r["target"]), []).append(r)
    for sc in scenarios:
        L += [f"## {sc.title}", "", sc.about + ".", ""]
        if sc.error:
            L += [f"**Scenario failed:** {sc.error}", ""]
        aggs = {t.name: aggregate(by.get((sc.key, t.name), [])) for t in sc.targets}
        L += (throughput_tables if sc.key == "throughput" else routing_tables)(sc, aggs)
        L.append("")
        if sc.notes:
            L += [f"- {n}" for n in sc.notes] + [""]
        checks = [(t.name, hb.verified[t.name]) for t in sc.targets if t.name in hb.verified]
        if checks:
            L += ["gRPC checks (`nghttp -v`, one call per target): " + "; ".join(
                f"{n}: :status {c['http_status']}, grpc-status {c['grpc_status']}, "
                f"x-backend {c['x_backend']}" for n, c in checks), ""]
        L += ["<details><summary>Commands (first repetition of each target; every command in "
              "commands.txt)</summary>", "", "```"]
        for t in sc.targets:
            cmds = hb.first_cmds.get((sc.key, t.name))
            if cmds:
                L.append(f"# {t.name}")
                L += [short_cmd(c, out) for c in cmds]
        L += ["```", "", "</details>", ""]
    if notes:
        L += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    L += ["## Runs", ""]
    L += B.table_head(["scenario", "target", "rep", "calls/s", "p50 ms", "p99 ms",
                       "CPU µs/call", "backend calls", "error / notes"])
    for r in hb.runs:
        cpu = (r["cpu_us"]["user"] + r["cpu_us"]["system"]) if r.get("cpu_us") else None
        L.append(B.table_row([r["scenario"], r["target"], r["rep"],
                              f_num(r.get("rps")) if r["ok"] else "-",
                              f_ms(r.get("latency_ms", {}).get("p50")),
                              f_ms(r.get("latency_ms", {}).get("p99")), f_num(cpu, 2),
                              json.dumps(r.get("backend_calls", {})).replace("|", "/"),
                              (r["error"] + " " + " ".join(r["notes"])).strip()[:300] or ""]))
    L += ["", f"RAW=`{out / 'raw'}`, ROOT=`{ROOT}`.", ""]
    (out / "summary.md").write_text("\n".join(L))
    (out / "commands.txt").write_text("\n".join(
        [f"# RAW={out / 'raw'}", f"# ROOT={ROOT}"]
        + [short_cmd(c, out) for c in hb.sup.commands]) + "\n")
    (out / "results.json").write_text(json.dumps(
        {"machine": info, "settings": settings, "notes": notes, "runs": hb.runs,
         "scenarios": [{"key": s.key, "title": s.title, "about": s.about, "reps": s.reps,
                        "clients": s.clients, "streams": s.streams, "error": s.error,
                        "notes": s.notes,
                        "targets": [{"name": t.name, "kind": t.kind, "mode": t.mode}
                                    for t in s.targets]} for s in scenarios]},
        indent=1, default=str) + "\n")


# ---------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"1 repetition, {QUICK_SECONDS} s runs (a functional check)")
    ap.add_argument("--seconds", type=int, help="seconds per h2load run (h2load -D; default "
                    f"BENCH_SECONDS, else {FULL_SECONDS}, or {QUICK_SECONDS} with --quick)")
    ap.add_argument("--requests", type=int,
                    help="calls per h2load run (h2load -n) instead of a duration")
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", 3)),
                    help="repetitions in a full run (BENCH_REPS, default 3)")
    ap.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIO_KEYS))
    ap.add_argument("--corelb-bin", type=Path, default=CORELB,
                    help=f"the corelb binary (default {B.rel(CORELB, ROOT)})")
    ap.add_argument("--out", help="results directory (default bench/results/<date>-<host>-h2"
                    "[-quick][-<only>])")
    args = ap.parse_args()
    only = args.only.split(",") if args.only else None
    unknown = sorted(set(only or []) - set(SCENARIO_KEYS))
    if unknown:
        ap.error(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIO_KEYS)}")
    corelb = args.corelb_bin.resolve()
    os.chdir(ROOT)
    seconds = args.seconds or int(os.environ.get("BENCH_SECONDS") or 0) or (
        QUICK_SECONDS if args.quick else FULL_SECONDS)
    reps = 1 if args.quick else args.reps
    date = datetime.date.today().isoformat()
    host = B.slug(socket.gethostname().split(".")[0]) or "host"
    out = Path(args.out) if args.out else BENCH / "results" / (
        f"{date}-{host}-h2{'-quick' if args.quick else ''}"
        + (f"-{'-'.join(only)}" if only else ""))
    out = out.resolve()
    shutil.rmtree(out / "raw", ignore_errors=True)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    (out / "summary.md").unlink(missing_ok=True)

    for b in (corelb, BACKEND):
        if not b.exists():
            log(f"{b} is missing: run `cargo build --release --workspace` first")
            return 1
    apt = B.Apt(out / "raw" / "apt.log")
    for cmd in ("h2load", "nghttp"):
        why = apt.ensure(cmd)
        if why:
            log(f"cannot benchmark without {cmd}: {why}")
            return 1
    notes: list = []
    tools = {"nginx": apt.ensure("nginx"),
             "haproxy": apt.ensure("haproxy")}
    for k, v in tools.items():
        if v:
            notes.append(f"{k} unavailable, its rows are failed: {v}")

    payload = out / "raw" / "request.bin"
    payload.write_bytes(synthesize_request(**REQUEST_FIELDS))

    sup = B.Supervisor()
    atexit.register(sup.stop_all)

    def on_signal(signum, _frame):
        raise B.Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    info = B.machine_info(corelb, None)
    info.pop("wrk", None)
    first = lambda s: s.splitlines()[0] if s else "missing"  # noqa: E731
    info["h2load"] = first(B.sh(["h2load", "--version"]))
    info["nghttp"] = first(B.sh(["nghttp", "--version"]))
    scenarios = build_scenarios(reps, set(only) if only else None)
    total_runs = sum(s.reps * len(s.targets) for s in scenarios)
    per_run = (seconds if not args.requests else 5) + 1.5
    log(f"{total_runs} h2load runs of {seconds if not args.requests else args.requests}"
        f"{' s' if not args.requests else ' calls'}: about {total_runs * per_run / 60:.1f} min; "
        f"results in {B.rel(out, ROOT)}")
    settings = {"date": date, "quick": args.quick, "seconds": seconds, "reps": reps,
                "requests": args.requests, "payload_bytes": payload.stat().st_size,
                "invocation": shlex.join(["python3", "bench/h2bench.py", *sys.argv[1:]])
                + (f" (BENCH_SECONDS={os.environ['BENCH_SECONDS']})"
                   if os.environ.get("BENCH_SECONDS") else "")}
    if args.quick:
        notes.append("quick run: 1 repetition per target, "
                     f"{seconds} s per h2load run: a functional check, not a measurement.")
    hb = H2Bench(out, seconds, args.requests, corelb, tools, sup, payload)
    started = time.monotonic()
    done = [0]

    def progress(sc, t, rep, r):
        done[0] += 1
        if r["ok"]:
            lat = r["latency_ms"]
            cpu = r.get("cpu_us")
            msg = (f"{r['rps']:.0f} calls/s, p50 {f_ms(lat['p50'])} ms, p99 "
                   f"{f_ms(lat['p99'])} ms, bad {r['failed'] + r['errored'] + r['timeout']}"
                   + (f", CPU {cpu['user'] + cpu['system']:.2f} µs/call" if cpu else "")
                   + (f", backends {r['backend_calls']}" if r.get("backend_calls") else ""))
        else:
            msg = f"FAILED: {r['error']}"
        log(f"[{done[0]}/{total_runs}] {sc.key} {t.name} r{rep + 1}: {msg}")

    def finish(interrupted: bool) -> None:
        info["loadavg_end"] = "%.2f %.2f %.2f" % os.getloadavg()
        settings["elapsed"] = time.monotonic() - started
        write_summary(out, info, settings, scenarios, hb, notes, interrupted)

    interrupted = False
    try:
        ports = take_ports(4)
        for sc in scenarios:
            try:
                hb.run_scenario(sc, ports[:3], ports[3], progress)
            except B.BenchError as e:
                sc.error = str(e)
                log(f"scenario {sc.key} failed: {sc.error}")
            finish(False)  # a summary after every scenario survives a later crash
    except (KeyboardInterrupt, B.Interrupted) as e:
        interrupted = True
        log(f"interrupted ({str(e) or 'SIGINT'}); stopping everything")
    except B.BenchError as e:
        notes.append(f"bench stopped: {e}")
        log(f"bench stopped: {e}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sup.stop_all()
    finish(interrupted)
    log(f"done in {time.monotonic() - started:.0f} s: {B.rel(out / 'summary.md', ROOT)}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
