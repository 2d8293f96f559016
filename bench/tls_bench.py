#!/usr/bin/env python3
"""TLS termination benchmark behind `make bench-tls` and `make bench-tls-quick`.

corelb (rustls, aws-lc-rs), NGINX (`listen ... ssl`) and HAProxy (`bind ... ssl crt`), one
worker/thread each, terminate TLS for one `corelb-backend --profile fast` (plain HTTP/1.1,
upstream keep-alive everywhere) on loopback ports 18300-18399. All three serve the same
ECDSA P-256 certificate, made for the run with `openssl req` in a temporary directory.

Scenarios (each proxy started fresh for every run; corelb, NGINX, HAProxy, corelb, ... in
turn; medians over --reps):
  full         a full handshake per request: `openssl s_time -new -www /` (HTTP/1.0, the
               server closes), --full-clients processes in parallel. wrk and h2load cannot do
               this: both resume the session of the previous connection (see the report).
  resumed      a handshake resumed from a session ticket per request: `wrk -H "Connection:
               close"` (wrk keeps the session across reconnects). s_time -reuse is no use:
               with TLS 1.3 it does full handshakes.
  keepalive    keep-alive HTTPS, a tiny body: `wrk -t1 -c32`
  1mib         1 MiB bodies (`/bytes/1048576`) over keep-alive HTTPS: MiB/s, CPU per MiB
  idle_memory  the proxy's RSS growth per idle TLS connection: N connections opened, one
               request answered on each, left idle (after a warm-up of 100)

CPU figures are user + system ticks of the proxy's processes (NGINX: master and worker)
from /proc/PID/stat over the load, divided by the requests completed. Handshakes counted
by the servers themselves (corelb's /stats `totals.tls`, HAProxy's stats socket) tell full
from resumed ones where the server can; NGINX has no such counter.

Prints a markdown report and writes it to bench/results/tls-<timestamp>[-quick].md, with
the runs in a .json next to it and raw outputs (wrk, s_time, process logs, configs) under
bench/results/tls-<timestamp>[-quick]/raw/ (gitignored). Stdlib only. Every process it
starts runs in its own session, is bounded in time and is stopped on exit, error or Ctrl-C.

    python3 bench/tls_bench.py [--reps 3] [--duration 10s] [--quick] [--only full,resumed]
"""

import argparse
import atexit
import datetime
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from string import Template
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402  (Supervisor, proc_cpu, wait_listening, machine_info, tables)
from benchlib import children, rss_kib  # noqa: E402

ROOT, BENCH, BACKEND, CORELB = B.ROOT, B.BENCH, B.BACKEND, B.CORELB
HOST = B.HOST
PORT_RANGE = range(18300, 18400)
PROXIES = ["corelb", "nginx", "haproxy"]
LABEL = {"corelb": "corelb", "nginx": "NGINX", "haproxy": "HAProxy"}
SCENARIOS = ["full", "resumed", "keepalive", "1mib", "idle_memory"]
MiB = 1 << 20
BIG_PATH = f"/bytes/{MiB}"
WARM_CONNS = 100  # idle_memory: opened (and left idle) before the baseline RSS
PAUSE_BETWEEN_RUNS = 0.5

CLIENT_CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CLIENT_CTX.check_hostname = False
CLIENT_CTX.verify_mode = ssl.CERT_NONE


def log(msg: str) -> None:
    print(f"tls_bench: {msg}", flush=True)


def parse_seconds(s: str) -> int:
    m = re.fullmatch(r"(\d+)\s*s?", s.strip())
    if not m or int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"{s!r}: a whole number of seconds, like 10 or 10s")
    return int(m.group(1))


def take_ports(n: int) -> list:
    free = [p for p in PORT_RANGE if B.port_free(p)][:n]
    if len(free) < n:
        raise B.BenchError(f"need {n} free ports in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")
    return free


def median(vals: list) -> Optional[float]:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


# ---------------------------------------------------------------------------------------
# A small TLS client (Python's ssl module): checks, the resumption probe, idle connections.


def read_response(s: ssl.SSLSocket, until_eof: bool) -> tuple:
    """Reads one HTTP/1.x response; returns (status, body length). Content-Length bodies
    are read to their length, others (and `until_eof`) to the end of the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError(f"connection closed in the response head ({len(data)} bytes)")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = None
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    got = len(body)
    while until_eof or length is None or got < length:
        try:
            chunk = s.recv(1 << 20)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            break
        if not chunk:
            break
        got += len(chunk)
    return status, got


def tls_request(port: int, request: bytes, session=None, until_eof: bool = True,
                timeout: float = 10.0) -> dict:
    raw = socket.create_connection((HOST, port), timeout=timeout)
    try:
        s = CLIENT_CTX.wrap_socket(raw, server_hostname="localhost", session=session)
        info = {"version": s.version(), "cipher": s.cipher()[0], "alpn": s.selected_alpn_protocol()}
        s.sendall(request)
        status, body = read_response(s, until_eof)
        info.update(status=status, body=body, session=s.session, reused=s.session_reused)
        s.close()
        return info
    finally:
        raw.close()


def get(path: str, close: bool = True) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def check_proxy(port: int, path: str, expect_body: Optional[int]) -> dict:
    """One request through the proxy over TLS must answer 200 (with `expect_body` bytes)."""
    r = tls_request(port, get(path))
    if r["status"] != 200 or (expect_body is not None and r["body"] != expect_body):
        raise B.BenchError(f"check GET {path}: status {r['status']}, {r['body']} body bytes"
                           + (f" (expected {expect_body})" if expect_body is not None else ""))
    return r


def probe_tls(port: int, sup: B.Supervisor, run_dir: Path) -> dict:
    """The TLS parameters the proxy negotiates with an OpenSSL client (s_client -brief: the
    group, which Python does not show) and whether a ticket from one connection resumes the
    next (Python's ssl); also the exact request s_time sends (HTTP/1.0, no Host) must work."""
    first = tls_request(port, get("/"))
    second = tls_request(port, get("/"), session=first["session"])
    s_time_req = tls_request(port, b"GET / HTTP/1.0\r\n\r\n")
    if s_time_req["status"] != 200:
        raise B.BenchError(f"s_time's request (GET / HTTP/1.0, no Host) answered "
                           f"{s_time_req['status']}")
    argv = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", "localhost",
            "-brief"]
    sup.record(argv)
    text = ""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                           stdin=subprocess.DEVNULL)
        text = r.stdout + r.stderr
    except subprocess.TimeoutExpired:
        text = "timed out"
    (run_dir / "s_client.txt").write_text(text)
    grab = lambda k: (re.findall(rf"^{k}: (.+)$", text, re.M) or ["?"])[0]  # noqa: E731
    return {"version": first["version"], "cipher": first["cipher"],
            "group": grab("Server Temp Key"), "signature": grab("Signature type"),
            "resumes": second["reused"]}


# ---------------------------------------------------------------------------------------
# Servers' own handshake counters.


def corelb_tls(admin_port: int) -> Optional[dict]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{admin_port}/stats", timeout=5) as r:
            return json.loads(r.read())["totals"]["tls"]
    except (OSError, ValueError, KeyError):
        return None


def haproxy_cli(sock: Path, cmd: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(cmd.encode() + b"\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode(errors="replace")


def haproxy_tls(sock: Path) -> Optional[dict]:
    """CumSslConns (every TLS connection the frontend accepted) from `show info`, and the
    frontend's ssl_sess (new sessions: full handshakes) and ssl_reused_sess."""
    try:
        info = haproxy_cli(sock, "show info")
        stat = haproxy_cli(sock, "show stat typed")
    except OSError:
        return None
    out = {}
    m = re.search(r"^CumSslConns: (\d+)", info, re.M)
    if m:
        out["conns"] = int(m.group(1))
    for ln in stat.splitlines():
        # F.<iid>.<sid>.<field nr>.<name>.<process>:<tags>:<type>:<value>
        if not ln.startswith("F."):
            continue
        key, _, rest = ln.partition(":")
        parts = key.split(".")
        if len(parts) >= 5 and parts[4] in ("ssl_sess", "ssl_reused_sess"):
            out[parts[4]] = out.get(parts[4], 0) + int(rest.rsplit(":", 1)[-1] or 0)
    return out


def handshake_counts(kind: str, c0: Optional[dict], c1: Optional[dict]) -> Optional[dict]:
    """{handshakes, resumed} between two readings, or None."""
    if not c0 or not c1:
        return None
    if kind == "corelb":
        return {"handshakes": c1["handshakes"] - c0["handshakes"],
                "resumed": c1["resumed"] - c0["resumed"]}
    if kind == "haproxy" and "ssl_sess" in c1 and "ssl_reused_sess" in c1:
        full = c1["ssl_sess"] - c0.get("ssl_sess", 0)
        resumed = c1["ssl_reused_sess"] - c0.get("ssl_reused_sess", 0)
        return {"handshakes": full + resumed, "resumed": resumed,
                "conns": c1.get("conns", 0) - c0.get("conns", 0)}
    return None


# ---------------------------------------------------------------------------------------
# The bench.


class TlsBench:
    def __init__(self, args, out_raw: Path, certdir: Path, sup: B.Supervisor, tools: dict):
        self.args = args
        self.raw = out_raw
        self.cert = certdir / "cert.pem"
        self.key = certdir / "key.pem"
        self.pem = certdir / "combined.pem"
        self.sup = sup
        self.tools = tools
        self.runs: list = []
        self.tls_params: dict = {}
        self.first_cmds: dict = {}
        self.backend = None
        self.backend_port = self.proxy_port = self.admin_port = 0

    # -- processes ----------------------------------------------------------------------

    def start_backend(self, port: int, run_dir: Path) -> None:
        B.wait_free(port)
        lf = run_dir / "backend.log"
        self.backend = self.sup.start([BACKEND, "--id", "A", "--port", port, "--profile",
                                       "fast"], lf)
        B.wait_listening(port, self.backend, lf)
        self.backend_port = port

    def stop_backend(self) -> None:
        if self.backend is not None:
            self.sup.stop(self.backend, signal.SIGTERM, 5.0)
            self.backend = None

    def launch(self, kind: str, scenario: str, run_dir: Path) -> tuple:
        """Starts a proxy; returns (Popen, log file, counter reader or None)."""
        port, backend = self.proxy_port, f"{HOST}:{self.backend_port}"
        B.wait_free(port)
        counters = None
        if kind == "corelb":
            cfg = {"_note": "written by bench/tls_bench.py",
                   "servers": [{"name": "A", "address": HOST, "port": self.backend_port}],
                   "listen": "off",
                   "tls": {"listen": [f"{HOST}:{port}"],
                           "certificates": [{"cert": str(self.cert), "key": str(self.key)}]}}
            (run_dir / "corelb.json").write_text(json.dumps(cfg, indent=2) + "\n")
            # The admin API only where its handshake counters are read.
            admin = f"{HOST}:{self.admin_port}" if scenario in ("full", "resumed") else "off"
            argv = [self.args.corelb_bin, "--config", run_dir / "corelb.json", "--no-pin",
                    "--workers", 1, "--log-csv", "off", "--admin", admin,
                    "--drain-timeout", "2s", "--idle-timeout", "300s"]
            if admin != "off":
                B.wait_free(self.admin_port)
                counters = lambda: corelb_tls(self.admin_port)  # noqa: E731
        elif kind == "nginx":
            (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
            conf = Template((BENCH / "nginx-tls.conf.tmpl").read_text()).substitute(
                dir=run_dir, port=port, backend=backend, cert=self.cert, key=self.key)
            (run_dir / "nginx.conf").write_text(conf)
            argv = ["nginx", "-c", run_dir / "nginx.conf", "-e", run_dir / "error.log"]
        elif kind == "haproxy":
            cfg = Template((BENCH / "haproxy-tls.cfg.tmpl").read_text()).substitute(
                dir=run_dir, port=port, backend=backend, pem=self.pem)
            (run_dir / "haproxy.cfg").write_text(cfg)
            argv = ["haproxy", "-db", "-f", run_dir / "haproxy.cfg"]
            sock = run_dir / "haproxy.sock"
            counters = lambda: haproxy_tls(sock)  # noqa: E731
        else:
            raise B.BenchError(f"unknown proxy {kind}")
        lf = run_dir / f"{kind}.log"
        p = self.sup.start(argv, lf)
        try:
            B.wait_listening(port, p, lf)
        except B.BenchError:
            self.sup.stop(p)
            raise
        return p, lf, counters

    def pids(self, p: subprocess.Popen) -> list:
        return [p.pid] + children(p.pid)

    # -- loads ----------------------------------------------------------------------------

    def wrk(self, path: str, close: bool, run_dir: Path) -> dict:
        a = self.args
        argv = ["wrk", "-t1", f"-c{a.conns}", f"-d{a.duration}s", "--timeout", "10s",
                "--latency"]
        if close:
            argv += ["-H", "Connection: close"]
        argv += ["-s", B.REPORT_LUA, f"https://{HOST}:{self.proxy_port}{path}"]
        outfile = run_dir / "wrk.txt"
        p = self.sup.start(argv, outfile)
        try:
            p.wait(a.duration + 30)
        except subprocess.TimeoutExpired:
            raise B.BenchError("wrk did not finish in time")
        finally:
            self.sup.stop(p)
        text = outfile.read_text(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if line is None:
            raise B.BenchError(f"wrk printed no BENCH_JSON line: {B.tail(outfile)}")
        j = json.loads(line[len("BENCH_JSON "):])
        pct = {p: v for p, v in j["latency_us"]["percentiles"]}
        secs = (j["duration_us"] or 0) / 1e6
        errs = {k: int(v or 0) for k, v in j["errors"].items()}
        n = int(j["requests"] or 0)
        ms = lambda us: None if us is None else us / 1000.0  # noqa: E731
        return {"cmd": shlex.join(str(x) for x in argv), "tool": "wrk", "requests": n,
                "seconds": secs, "rps": n / secs if secs else 0.0,
                "bytes_read": int(j["bytes"] or 0), "errors": errs,
                "errors_total": sum(errs.values()),
                "p50_ms": ms(pct.get(50)), "p99_ms": ms(pct.get(99)),
                "p99.9_ms": ms(pct.get(99.9))}

    def s_time(self, run_dir: Path) -> dict:
        """--full-clients `openssl s_time -new` processes at once (each one connection at a
        time: connect, full handshake, GET / HTTP/1.0, read to the end, close)."""
        a = self.args
        argv = ["openssl", "s_time", "-connect", f"{HOST}:{self.proxy_port}", "-new", "-www",
                "/", "-time", str(a.duration)]
        procs = []
        t0 = time.monotonic()
        for i in range(a.full_clients):
            procs.append((self.sup.start(argv, run_dir / f"s_time-{i}.txt"),
                          run_dir / f"s_time-{i}.txt"))
        try:
            for p, _ in procs:
                p.wait(max(1.0, t0 + a.duration + 30 - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise B.BenchError("s_time did not finish in time")
        finally:
            wall = time.monotonic() - t0
            for p, _ in procs:
                self.sup.stop(p)
        conns = bad = 0
        bytes_read = 0
        for p, f in procs:
            text = f.read_text(errors="replace")
            m = re.search(r"(\d+) connections in [\d.]+s; [\d.]+ connections/user sec, "
                          r"bytes read (\d+)", text)
            if not m or p.returncode != 0:
                bad += 1
                continue
            conns += int(m.group(1))
            bytes_read += int(m.group(2))
        if bad == len(procs) or not conns:
            raise B.BenchError(f"s_time failed: {B.tail(procs[0][1])}")
        per_conn = bytes_read / conns
        # A 200 with the fast backend's short text is 150-200 bytes; an error page differs.
        return {"cmd": f"{a.full_clients} x " + shlex.join(argv), "tool": "openssl s_time",
                "requests": conns, "seconds": wall, "rps": conns / wall,
                "bytes_per_request": per_conn, "errors": {"s_time_failed": bad},
                "errors_total": bad, "p50_ms": None, "p99_ms": None,
                # Little's law over the closed loop: the mean time of one connection.
                "mean_conn_ms": a.full_clients * wall / conns * 1000.0}

    def idle(self, pids: list) -> dict:
        """N idle TLS connections, one request answered on each; the RSS they add."""
        a = self.args
        socks = []
        try:
            def open_n(n: int, deadline: float) -> None:
                req = get("/", close=False)
                for _ in range(n):
                    if time.monotonic() > deadline:
                        raise B.BenchError(f"opening connections took longer than "
                                           f"{a.idle_open_limit} s ({len(socks)} open)")
                    raw = socket.create_connection((HOST, self.proxy_port), timeout=10)
                    s = CLIENT_CTX.wrap_socket(raw, server_hostname="localhost")
                    socks.append(s)
                    s.sendall(req)
                    status, _ = read_response(s, until_eof=False)
                    if status != 200:
                        raise B.BenchError(f"idle connection {len(socks)}: status {status}")
            open_n(WARM_CONNS, time.monotonic() + a.idle_open_limit)
            time.sleep(a.idle_settle)
            before = rss_kib(pids)
            t0 = time.monotonic()
            open_n(a.idle_conns, t0 + a.idle_open_limit)
            opened_s = time.monotonic() - t0
            time.sleep(a.idle_settle)
            after = rss_kib(pids)
        finally:
            for s in socks:
                try:
                    s.close()
                except OSError:
                    pass
        return {"tool": "python ssl", "connections": a.idle_conns, "rss_before_kib": before,
                "rss_after_kib": after, "open_s": opened_s,
                "bytes_per_conn": (after - before) * 1024 / a.idle_conns,
                "cmd": f"python3 ssl client: {WARM_CONNS} warm-up + {a.idle_conns} TLS "
                       f"connections, one keep-alive GET / each, {a.idle_settle} s settle"}

    # -- one run --------------------------------------------------------------------------

    def run_one(self, scenario: str, kind: str, rep: int) -> dict:
        run_dir = self.raw / scenario / f"{kind}-r{rep + 1}"
        run_dir.mkdir(parents=True, exist_ok=True)
        res = {"scenario": scenario, "proxy": kind, "rep": rep + 1, "ok": False, "error": "",
               "notes": []}
        cmds_before = len(self.sup.commands)
        p = None
        t0 = time.monotonic()
        try:
            if self.tools.get(kind):
                raise B.BenchError(self.tools[kind])
            if self.backend is None or self.backend.poll() is not None:
                raise B.BenchError("the backend is not running")
            p, lf, counters = self.launch(kind, scenario, run_dir)
            if kind not in self.tls_params:
                self.tls_params[kind] = probe_tls(self.proxy_port, self.sup, run_dir)
            if rep == 0:
                big = scenario == "1mib"
                check_proxy(self.proxy_port, BIG_PATH if big else "/", MiB if big else None)
            pids = self.pids(p)
            if scenario == "idle_memory":
                res.update(self.idle(pids))
                res["ok"] = True
            else:
                c0 = counters() if counters else None
                cpu0 = B.proc_cpu(p.pid)
                if scenario == "full":
                    res.update(self.s_time(run_dir))
                else:
                    res.update(self.wrk(BIG_PATH if scenario == "1mib" else "/",
                                        scenario == "resumed", run_dir))
                cpu1 = B.proc_cpu(p.pid)
                c1 = counters() if counters else None
                n = res["requests"]
                if not n:
                    raise B.BenchError("no requests completed")
                if cpu0 and cpu1:
                    res["cpu_us"] = {"user": (cpu1[0] - cpu0[0]) / n * 1e6,
                                     "system": (cpu1[1] - cpu0[1]) / n * 1e6}
                    res["cpu_s"] = cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1]
                hs = handshake_counts(kind, c0, c1)
                if hs:
                    res["handshakes"] = hs
                if scenario == "1mib":
                    res["mib_per_s"] = n * MiB / MiB / res["seconds"]
                res["ok"] = True
        except B.BenchError as e:
            res["error"] = str(e)
        except Exception as e:  # a harness bug fails this run, not the bench
            res["error"] = f"{type(e).__name__}: {e}"
        finally:
            if p is not None:
                rc = self.sup.stop(p, signal.SIGTERM, 10.0)
                if rc != 0 and not (kind != "corelb" and rc == -signal.SIGTERM):
                    res["notes"].append(f"{kind} exit code {rc} after stop: {B.tail(lf)}")
        res["wall_s"] = round(time.monotonic() - t0, 2)
        self.first_cmds.setdefault((scenario, kind), self.sup.commands[cmds_before:])
        self.runs.append(res)
        return res


# ---------------------------------------------------------------------------------------
# Report.


def fnum(v: Optional[float], digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def aggregate(runs: list) -> dict:
    ok = [r for r in runs if r["ok"]]
    a = {"n": len(runs), "ok": len(ok), "errors": [r["error"] for r in runs if not r["ok"]]}
    if not ok:
        return a
    g = lambda f: median([f(r) for r in ok])  # noqa: E731
    a["rps"] = g(lambda r: r.get("rps"))
    a["p50"] = g(lambda r: r.get("p50_ms"))
    a["p99"] = g(lambda r: r.get("p99_ms"))
    a["mean_conn"] = g(lambda r: r.get("mean_conn_ms"))
    a["cpu"] = g(lambda r: r["cpu_us"]["user"] + r["cpu_us"]["system"]
                 if r.get("cpu_us") else None)
    a["cpu_user"] = g(lambda r: r.get("cpu_us", {}).get("user"))
    a["cpu_sys"] = g(lambda r: r.get("cpu_us", {}).get("system"))
    a["mib_s"] = g(lambda r: r.get("mib_per_s"))
    a["err"] = g(lambda r: r.get("errors_total"))
    a["bytes_per_conn"] = g(lambda r: r.get("bytes_per_conn"))
    a["rss_before"] = g(lambda r: r.get("rss_before_kib"))
    a["rss_after"] = g(lambda r: r.get("rss_after_kib"))
    hs = [r["handshakes"] for r in ok if r.get("handshakes")]
    if hs:
        a["handshakes"] = sum(h["handshakes"] for h in hs)
        a["resumed"] = sum(h["resumed"] for h in hs)
        a["hs_requests"] = sum(r["requests"] for r in ok if r.get("handshakes"))
    return a


def cpu_cell(a: dict) -> str:
    if a.get("cpu") is None:
        return "-"
    return f"{a['cpu']:.1f} ({a['cpu_user']:.1f} + {a['cpu_sys']:.1f})"


def hs_cell(a: dict) -> str:
    if not a.get("handshakes"):
        return "not counted"
    full = a["handshakes"] - a["resumed"]
    return (f"{100.0 * full / a['handshakes']:.1f}% full, {100.0 * a['resumed'] / a['handshakes']:.1f}% "
            f"resumed ({a['handshakes']:,} handshakes, {a['hs_requests']:,} requests)")


def runs_cell(a: dict) -> str:
    if not a.get("ok"):
        return "FAILED: " + "; ".join(a["errors"])[:200]
    return f"{a['ok']}/{a['n']}"


SCENARIO_TITLES = {
    "full": "full: a full TLS handshake per request",
    "resumed": "resumed: a resumed TLS handshake (session ticket) per request",
    "keepalive": "keepalive: keep-alive HTTPS, tiny body",
    "1mib": "1mib: 1 MiB responses over keep-alive HTTPS",
    "idle_memory": "idle_memory: memory per idle TLS connection",
}


def scenario_about(sc: str, a) -> str:
    if sc == "full":
        return (f"{a.full_clients} x `openssl s_time -connect 127.0.0.1:PORT -new -www / -time "
                f"{a.duration}` at once: each process makes one connection at a time, full "
                "handshake, `GET / HTTP/1.0` (no keep-alive: the server closes), reads to the "
                "end. (wrk and h2load resume the previous connection's session when they "
                "reconnect: corelb counted over 99% of their `Connection: close` handshakes "
                "as resumed; `s_time -reuse`, the other way round, makes full handshakes "
                "under TLS 1.3.) s_time reports no latencies; 'mean ms' is the mean time of one "
                "connection (handshake included) by Little's law: clients x seconds / "
                "connections. CPU per request = CPU per full handshake plus its request.")
    if sc == "resumed":
        return (f"`wrk -t1 -c{a.conns} -d{a.duration}s --latency -H 'Connection: close'`: a new "
                "connection per request, which wrk resumes with the previous connection's "
                "session ticket (TLS 1.3 PSK, with (EC)DHE: X25519 still runs, no certificate "
                "or signature). wrk's latency starts once the handshake is done: it is the "
                "request's time, not the connection's.")
    if sc == "keepalive":
        return f"`wrk -t1 -c{a.conns} -d{a.duration}s --latency`, `GET /` (a short text body)."
    if sc == "1mib":
        return (f"`wrk -t1 -c{a.conns} -d{a.duration}s --latency`, `GET {BIG_PATH}` (1 MiB "
                "body from the backend). MiB/s counts bodies (requests x 1 MiB); CPU per MiB "
                "is the CPU per request.")
    return (f"Python's ssl module opens {WARM_CONNS} TLS connections (one keep-alive `GET /` "
            f"answered on each, left open), waits {a.idle_settle} s, reads the proxy's RSS "
            f"(VmRSS summed over its processes), opens {a.idle_conns} more the same way one "
            f"after another, waits {a.idle_settle} s, reads the RSS again: (after - before) / "
            f"{a.idle_conns}.")


def scenario_table(sc: str, aggs: dict) -> list:
    c, n, h = (aggs.get(k, {}) for k in PROXIES)
    L = []
    if sc == "idle_memory":
        L += B.table_head(["proxy", "idle connections", "RSS before KiB", "RSS after KiB",
                           "bytes per idle connection", "runs ok"])
        for k in PROXIES:
            a = aggs[k]
            L.append(B.table_row([LABEL[k], fnum(aggs["_conns"]) if a.get("ok") else "-",
                                  fnum(a.get("rss_before")), fnum(a.get("rss_after")),
                                  fnum(a.get("bytes_per_conn")), runs_cell(a)]))
        L += [""]
        L += B.table_head(["", "bytes per idle connection"])
        L.append(B.table_row(["corelb / NGINX", B.ratio(c.get("bytes_per_conn"),
                                                        n.get("bytes_per_conn"))]))
        L.append(B.table_row(["corelb / HAProxy", B.ratio(c.get("bytes_per_conn"),
                                                          h.get("bytes_per_conn"))]))
        return L
    big = sc == "1mib"
    cols = ["proxy", "MiB/s" if big else "requests/s"]
    cols += ["mean ms (per connection)"] if sc == "full" else ["p50 ms", "p99 ms"]
    cols += ["CPU µs/MiB (user + sys)" if big else "CPU µs/request (user + sys)", "errors"]
    if sc in ("full", "resumed"):
        cols.append("handshakes (server's counters)")
    cols.append("runs ok")
    L += B.table_head(cols)
    for k in PROXIES:
        a = aggs[k]
        row = [LABEL[k], fnum(a.get("mib_s") if big else a.get("rps"), 1 if big else 0)]
        row += [B.fmt_ms(a.get("mean_conn"))] if sc == "full" else [
            B.fmt_ms(a.get("p50")), B.fmt_ms(a.get("p99"))]
        row += [cpu_cell(a), fnum(a.get("err"))]
        if sc in ("full", "resumed"):
            row.append(hs_cell(a) if k != "nginx" else "not counted (NGINX has no counter)")
        row.append(runs_cell(a))
        L.append(B.table_row(row))
    thr = "mib_s" if big else "rps"
    lat = "mean_conn" if sc == "full" else "p99"
    L += [""]
    L += B.table_head(["", "MiB/s" if big else "requests/s",
                       "mean ms" if sc == "full" else "p99", "CPU per MiB" if big else
                       "CPU per request"])
    for name, b in (("corelb / NGINX", n), ("corelb / HAProxy", h)):
        L.append(B.table_row([name, B.ratio(c.get(thr), b.get(thr)),
                              B.ratio(c.get(lat), b.get(lat)), B.ratio(c.get("cpu"), b.get("cpu"))]))
    return L


def report(args, info: dict, tb: TlsBench, scenarios: list, notes: list, settings: dict,
           interrupted: bool) -> str:
    L = [f"# corelb TLS benchmark, {settings['started']}", ""]
    if args.quick:
        L += ["**Quick run: a functional check, not a measurement** (1 repetition of "
              f"{args.duration} s per proxy).", ""]
    if interrupted:
        L += ["**Interrupted: the tables hold only the runs that finished.**", ""]
    L += [f"Command: `{settings['invocation']}` ({args.reps} repetition(s) of {args.duration} s "
          f"per proxy and scenario, proxies alternating corelb, NGINX, HAProxy, ...; medians; "
          f"{settings.get('elapsed', 0) / 60:.1f} min in all)", "",
          f"Machine: {info['nproc']} cores ({info['cpu']}), kernel {info['kernel']}, "
          f"host {info['host']}; load average at start {info['loadavg_start']}, at end "
          f"{info.get('loadavg_end', '-')}. The load generator, the backend and the proxy "
          "share the cores.", "",
          f"corelb: {info['corelb']}, commit {info['commit']}; {info['nginx']}; "
          f"{info['haproxy'].split(' - ')[0]}; {info['wrk']}; {info['openssl']}; Python "
          f"{info['python']}.", "",
          "Setup: one `corelb-backend --profile fast` (plain HTTP/1.1); corelb `--workers 1 "
          "--no-pin --log-csv off`, TLS listener from the config's `tls` object; NGINX "
          "`worker_processes 1`, `listen ... ssl`, upstream `keepalive 64` "
          "(bench/nginx-tls.conf.tmpl); HAProxy `nbthread 1`, `bind ... ssl crt`, "
          "`http-reuse always` (bench/haproxy-tls.cfg.tmpl). One ECDSA P-256 certificate "
          "(`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256`, CN and SAN "
          "localhost, 127.0.0.1) for all three. Every proxy is started fresh for every run. "
          "CPU: user + system ticks of the proxy's processes (/proc/PID/stat; NGINX master "
          "and worker) over the load, divided by the requests completed (10 ms ticks); user "
          "and system are medians of their own, so they need not add up to the total.", ""]
    if tb.tls_params:
        L += ["TLS negotiated with each proxy (OpenSSL client: `openssl s_client -brief`; "
              "resumption: a second Python connection offering the first one's ticket):", ""]
        L += B.table_head(["proxy", "version", "cipher suite", "key exchange", "signature",
                           "resumes from a ticket"])
        for k in PROXIES:
            t = tb.tls_params.get(k)
            if t:
                L.append(B.table_row([LABEL[k], t["version"], t["cipher"], t["group"],
                                      t["signature"], "yes" if t["resumes"] else "NO"]))
        L.append("")
    by = {}
    for r in tb.runs:
        by.setdefault((r["scenario"], r["proxy"]), []).append(r)
    for sc in scenarios:
        aggs = {k: aggregate(by.get((sc, k), [])) for k in PROXIES}
        aggs["_conns"] = args.idle_conns
        L += [f"## {SCENARIO_TITLES[sc]}", "", scenario_about(sc, args), ""]
        L += scenario_table(sc, aggs)
        L += ["", "Ratios are corelb's median over the other proxy's: requests/s and MiB/s "
              "higher is better for corelb, latency, CPU and memory lower is better." if sc !=
              "idle_memory" else "Ratio: corelb's median over the other's (lower is better "
              "for corelb).", ""]
        cmds = [f"# {LABEL[k]}\n" + "\n".join(short(c) for c in tb.first_cmds.get((sc, k), []))
                for k in PROXIES if tb.first_cmds.get((sc, k))]
        if cmds:
            L += ["<details><summary>Commands (first repetition)</summary>", "", "```"]
            L += cmds + ["```", "", "</details>", ""]
    if notes:
        L += ["## Notes", ""] + [f"- {x}" for x in notes] + [""]
    L += ["## Runs", ""]
    L += B.table_head(["scenario", "proxy", "rep", "requests/s", "p99 ms", "CPU µs/request",
                       "MiB/s", "bytes/idle conn", "handshakes (resumed)", "error / notes"])
    for r in tb.runs:
        cpu = (r["cpu_us"]["user"] + r["cpu_us"]["system"]) if r.get("cpu_us") else None
        hs = r.get("handshakes")
        L.append(B.table_row([
            r["scenario"], LABEL[r["proxy"]], r["rep"], fnum(r.get("rps")),
            B.fmt_ms(r.get("p99_ms")), fnum(cpu, 1), fnum(r.get("mib_per_s"), 1),
            fnum(r.get("bytes_per_conn")),
            f"{hs['handshakes']:,} ({hs['resumed']:,})" if hs else "-",
            (r["error"] + " " + " ".join(r["notes"])).strip()[:300].replace("|", "/")]))
    L.append("")
    return "\n".join(L)


def short(c: str) -> str:
    return c.replace(str(ROOT) + "/", "")


# ---------------------------------------------------------------------------------------


def make_cert(d: Path, sup: B.Supervisor) -> None:
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:P-256", "-nodes", "-keyout", d / "key.pem", "-out",
            d / "cert.pem", "-days", "7", "-subj", "/CN=localhost", "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    argv = [str(a) for a in argv]
    sup.record(argv)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise B.BenchError(f"openssl req failed: {r.stderr.strip()[:300]}")
    (d / "combined.pem").write_text((d / "cert.pem").read_text() + (d / "key.pem").read_text())
    for f in ("key.pem", "combined.pem"):
        os.chmod(d / f, 0o600)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions per proxy (default 3)")
    ap.add_argument("--duration", type=parse_seconds, default=None,
                    help="seconds per load run, like 10 or 10s (default 10; 3 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="1 repetition of 3 s runs (a functional check)")
    ap.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    ap.add_argument("--conns", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--full-clients", type=int, default=8,
                    help="parallel `openssl s_time -new` processes in the full scenario "
                         "(default 8)")
    ap.add_argument("--idle-conns", type=int, default=2000,
                    help="idle TLS connections in idle_memory (default 2000)")
    ap.add_argument("--idle-settle", type=float, default=8.0,
                    help="seconds idle_memory waits before each RSS reading (default 8)")
    ap.add_argument("--idle-open-limit", type=float, default=120.0,
                    help="most seconds idle_memory may take to open its connections")
    ap.add_argument("--corelb-bin", type=Path, default=CORELB,
                    help=f"the corelb binary (default {B.rel(CORELB, ROOT)})")
    ap.add_argument("--out", type=Path, help="report file (default bench/results/"
                    "tls-<timestamp>[-quick].md; raw outputs next to it)")
    args = ap.parse_args()
    if args.quick:
        args.reps = 1
        args.duration = args.duration or 3
    args.duration = args.duration or 10
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    only = args.only.split(",") if args.only else SCENARIOS
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        ap.error(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    scenarios = [s for s in SCENARIOS if s in only]
    args.corelb_bin = args.corelb_bin.resolve()
    os.chdir(ROOT)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"tls-{stamp}{'-quick' if args.quick else ''}"
    md = (args.out or BENCH / "results" / f"{name}.md").resolve()
    raw = md.with_suffix("") / "raw"  # gitignored: bench/results/*/raw/
    raw.mkdir(parents=True, exist_ok=True)

    for b in (args.corelb_bin, BACKEND):
        if not b.exists():
            log(f"{b} is missing: run `cargo build --release --workspace` first")
            return 1
    apt = B.Apt(raw / "apt.log")
    for cmd in ("wrk", "openssl"):
        why = apt.ensure(cmd)
        if why:
            log(f"cannot benchmark without {cmd}: {why}")
            return 1
    notes: list = []
    tools = {"nginx": apt.ensure("nginx"), "haproxy": apt.ensure("haproxy")}
    for k, v in tools.items():
        if v:
            notes.append(f"{k} unavailable, its rows are failed: {v}")

    # 2,100 idle connections need descriptors; the proxies inherit the raised limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536) if hard !=
                                                    resource.RLIM_INFINITY else 65536, hard))

    sup = B.Supervisor()
    atexit.register(sup.stop_all)
    certdir = Path(tempfile.mkdtemp(prefix="corelb-tls-bench-"))
    atexit.register(shutil.rmtree, certdir, True)

    def on_signal(signum, _frame):
        raise B.Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    info = B.machine_info(args.corelb_bin, None)
    info["openssl"] = B.sh(["openssl", "version"]) or "openssl missing"
    invocation = shlex.join(["python3", "bench/tls_bench.py", *sys.argv[1:]])
    settings = {"started": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S %Z").strip(),
                "invocation": invocation}
    per_run = {"idle_memory": 2 * args.idle_settle + 6}
    est = sum(args.reps * 3 * (per_run.get(s, args.duration + 2)) for s in scenarios)
    log(f"{args.reps} repetition(s) x 3 proxies x {len(scenarios)} scenario(s), about "
        f"{est / 60:.1f} min; report {B.rel(md, ROOT)}")
    tb = TlsBench(args, raw, certdir, sup, tools)
    started = time.monotonic()
    interrupted = False

    def progress(r: dict) -> None:
        if not r["ok"]:
            msg = f"FAILED: {r['error']}"
        elif r["scenario"] == "idle_memory":
            msg = (f"RSS {r['rss_before_kib']} -> {r['rss_after_kib']} KiB, "
                   f"{r['bytes_per_conn']:.0f} bytes per idle connection")
        else:
            cpu = r.get("cpu_us")
            hs = r.get("handshakes")
            msg = (f"{r['rps']:.0f} req/s"
                   + (f", {r['mib_per_s']:.1f} MiB/s" if r.get("mib_per_s") else "")
                   + (f", p99 {B.fmt_ms(r['p99_ms'])} ms" if r.get("p99_ms") is not None else "")
                   + (f", CPU {cpu['user'] + cpu['system']:.1f} µs/req" if cpu else "")
                   + (f", errors {r['errors_total']}" if r.get("errors_total") else "")
                   + (f", handshakes {hs['handshakes']} ({hs['resumed']} resumed)" if hs else ""))
        log(f"{r['scenario']} {r['proxy']} r{r['rep']}: {msg}")

    def finish() -> str:
        info["loadavg_end"] = "%.2f %.2f %.2f" % os.getloadavg()
        settings["elapsed"] = time.monotonic() - started
        text = report(args, info, tb, scenarios, notes, settings, interrupted)
        md.write_text(text)
        md.with_suffix(".json").write_text(json.dumps(
            {"machine": info, "settings": settings, "args": {k: str(v) for k, v in
                                                             vars(args).items()},
             "tls": tb.tls_params, "notes": notes, "runs": tb.runs}, indent=1, default=str)
            + "\n")
        return text

    try:
        make_cert(certdir, sup)
        backend_port, tb.proxy_port, tb.admin_port = take_ports(3)
        for sc in scenarios:
            log(f"scenario {sc}")
            (raw / sc).mkdir(parents=True, exist_ok=True)
            tb.start_backend(backend_port, raw / sc)
            try:
                for rep in range(args.reps):
                    for kind in PROXIES:  # alternating: corelb, NGINX, HAProxy, corelb, ...
                        progress(tb.run_one(sc, kind, rep))
                        time.sleep(PAUSE_BETWEEN_RUNS)
            finally:
                tb.stop_backend()
            finish()  # a report after every scenario survives a later crash
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
    text = finish()
    print()
    print(text)
    log(f"done in {time.monotonic() - started:.0f} s: {B.rel(md, ROOT)} (raw outputs in "
        f"{B.rel(raw, ROOT)})")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
