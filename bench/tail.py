#!/usr/bin/env python3
"""Tail latency with hedged requests: three `corelb-backend --profile fixed:2 --stall
0.02:500` servers (each stalls 2% of its requests for 500 ms, a pause like a garbage
collection, and answers the rest in about 2 ms) behind corelb without hedging, corelb
with hedging, NGINX and HAProxy (round robin, upstream keep-alive), 1 worker or thread
each, alternating, medians of REPS. Prints a markdown table.

HTTP (default): `wrk -t2 -c32 -d SECONDS` (GET /); corelb hedges with `--hedge-delay
p95`. Latencies are wrk's (bench/report.lua); backend requests are the backends' own
/stats counters, per client request.

--grpc: the backends run `--protocol grpc`; `h2load -t1 -c32 -m1 -D SECONDS` (32 calls
in flight, as wrk's 32 connections) sends gRPC unary calls, `POST /tts.TTS/Synthesize`
with bench/h2bench.py's request and headers, over h2c with prior knowledge to corelb
(servers `"protocol": "h2c"`; hedged: `"hedgingPolicy": {"maxAttempts": 2,
"hedgingDelay": "p95", "methods": ["/tts.TTS/*"]}` in its config), NGINX (`grpc_pass`,
bench/nginx-grpc.conf.tmpl) and HAProxy (`proto h2`, bench/haproxy-h2.cfg.tmpl).
Latencies come from h2load's --log-file (every 2xx call). The backends are started
fresh for every run; their exit line (SIGTERM) gives the calls they received, per call
h2load started. First, one call through each target with `nghttp -v` must end with
`grpc-status: 0` (h2load only sees HTTP statuses).

    python3 bench/tail.py [--grpc] [--seconds 10] [--reps 3]
"""

import argparse
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import HOST, free_port, stop, wait_port  # noqa: E402
from h2bench import (  # noqa: E402  (the request, its headers and the percentile of h2bench)
    GRPC_HEADERS, GRPC_PATH, REQUEST_FIELDS, percentile, synthesize_request)

BENCH = ROOT / "bench"
BIN = ROOT / "target" / "release"
BACKEND_ARGS = ["--profile", "fixed:2", "--stall", "0.02:500"]
CLIENTS = 32
HEDGING_POLICY = {"maxAttempts": 2, "hedgingDelay": "p95", "methods": ["/tts.TTS/*"]}


def backend_requests(ports):
    total = 0
    for p in ports:
        with urllib.request.urlopen(f"http://{HOST}:{p}/stats", timeout=5) as r:
            total += json.load(r)["requests"]
    return total


def start_backends(grpc, log_dir):
    """Three backends on free ports: (processes, ports). Each writes its stderr (errors,
    and its totals when it exits) to log_dir/backend-N.log."""
    procs, ports = [], []
    try:
        for i in range(3):
            bp = free_port()
            args = [str(BIN / "corelb-backend"), "--id", f"B{i}", "--port", str(bp),
                    *BACKEND_ARGS, "--seed", str(i + 1)]
            if grpc:
                args += ["--protocol", "grpc"]
            with open(log_dir / f"backend-{i}.log", "w") as err:
                procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err,
                                              start_new_session=True))
            wait_port(bp)
            ports.append(bp)
    except BaseException:
        stop(procs)
        raise
    return procs, ports


def stop_grpc_backends(procs, log_dir):
    """Stops them (SIGTERM: each prints its totals as JSON) and returns the calls they got."""
    stop(procs)
    total = 0
    for i in range(len(procs)):
        lines = (log_dir / f"backend-{i}.log").read_text(errors="replace").splitlines()
        line = next((x for x in reversed(lines) if x.startswith("{") and '"requests"' in x), None)
        if line is None:
            raise RuntimeError(f"backend B{i} printed no totals: {lines[-3:]}")
        total += json.loads(line)["requests"]
    return total


def corelb_config(name, ports, grpc):
    servers = [{"name": f"B{i}", "address": HOST, "port": p} for i, p in enumerate(ports)]
    cfg = {"servers": servers, "healthCheck": {"enabled": False}}
    if grpc:
        for s in servers:
            s["protocol"] = "h2c"
        if name == "corelb-hedged":
            cfg["hedgingPolicy"] = HEDGING_POLICY
    return json.dumps(cfg)


def start(name, ports, port, run_dir, grpc):
    if name.startswith("corelb"):
        cfg = run_dir / "corelb.json"
        cfg.write_text(corelb_config(name, ports, grpc))
        args = [str(BIN / "corelb"), "--config", str(cfg), "--listen", f"{HOST}:{port}",
                "--workers", "1", "--log-csv", "off", "--admin", "off", "--mode", "round-robin",
                "--eject-after", "0"]
        if name == "corelb-hedged" and not grpc:
            args += ["--hedge-delay", "p95"]
    elif name == "haproxy":
        proto = " proto h2" if grpc else ""
        servers = "\n".join(f"    server B{i} {HOST}:{p}{proto}" for i, p in enumerate(ports))
        cfg = run_dir / "haproxy.cfg"
        tmpl = "haproxy-h2.cfg.tmpl" if grpc else "haproxy.cfg.tmpl"
        cfg.write_text(Template((BENCH / tmpl).read_text()).substitute(
            threads=1, dir=run_dir, port=port, servers=servers, balance="roundrobin"))
        args = ["haproxy", "-db", "-f", str(cfg)]
    else:
        (run_dir / "tmp").mkdir(exist_ok=True)
        servers = "\n".join(f"        server {HOST}:{p};" for p in ports)
        cfg = run_dir / "nginx.conf"
        fill = dict(workers=1, dir=run_dir, port=port, servers=servers,
                    balance="# round robin (the default)")
        if grpc:
            cfg.write_text(Template((BENCH / "nginx-grpc.conf.tmpl").read_text()).substitute(fill))
        else:
            cfg.write_text(Template((BENCH / "nginx.conf.tmpl").read_text()).substitute(
                fill, tuning="# no extra settings"))
        args = ["nginx", "-c", str(cfg), "-p", str(run_dir), "-e", str(run_dir / "error.log")]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        wait_port(port)
    except BaseException:
        stop([p])
        raise
    return p


def wrk(port, seconds):
    out = subprocess.run(["wrk", "-t2", f"-c{CLIENTS}", f"-d{seconds}s", "-s",
                          str(BENCH / "report.lua"), f"http://{HOST}:{port}/"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON"))
    r = json.loads(line.split(" ", 1)[1])
    pct = dict((p, v) for p, v in r["latency_us"]["percentiles"])
    return {"n": r["requests"], "rps": r["requests"] / (r["duration_us"] / 1e6),
            "p50": pct[50] / 1000, "p99": pct[99] / 1000, "p999": pct[99.9] / 1000}


def h2load_argv(port, seconds, payload, logfile):
    argv = ["h2load", "-t1", f"-c{CLIENTS}", "-m1", "-D", str(seconds), "-d", str(payload)]
    for h in GRPC_HEADERS:
        argv += ["-H", h]
    return argv + ["--log-file", str(logfile), f"http://{HOST}:{port}{GRPC_PATH}"]


def h2load(port, seconds, run_dir):
    logfile = run_dir / "h2load-requests.log"
    logfile.unlink(missing_ok=True)  # h2load appends
    argv = h2load_argv(port, seconds, run_dir / "request.bin", logfile)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    # The per-call log: start (µs since the epoch), HTTP status, µs to the end of the response.
    durs, bad = [], 0
    for line in logfile.read_text(errors="replace").splitlines() if logfile.exists() else []:
        parts = line.split("\t")
        if len(parts) >= 3:
            if parts[1].startswith("2"):
                durs.append(int(parts[2]))
            else:
                bad += 1
    m = re.search(r"(\d+) started, \d+ done, \d+ succeeded, (\d+) failed, (\d+) errored, "
                  r"(\d+) timeout", r.stdout)
    if not m:
        raise RuntimeError(f"h2load exited {r.returncode} without a report: "
                           f"{(r.stdout + r.stderr)[-400:]}")
    started = int(m.group(1))
    bad += sum(map(int, m.groups()[1:]))
    if not durs:
        raise RuntimeError(f"h2load: no successful calls (exit {r.returncode}): "
                           f"{(r.stdout + r.stderr)[-400:]}")
    durs.sort()
    # Calls still in flight when h2load stops reached the backends too: count them as sent.
    return {"n": started, "rps": len(durs) / seconds, "p50": percentile(durs, 50) / 1000,
            "p99": percentile(durs, 99) / 1000, "p999": percentile(durs, 99.9) / 1000,
            "bad": bad}


def grpc_check(name, run_dir):
    """One call through `name` with `nghttp -v`, on fresh backends: (:status, grpc-status,
    x-backend); raises unless 200 and 0."""
    procs, ports = start_backends(True, run_dir)
    port = free_port()
    try:
        p = start(name, ports, port, run_dir, True)
        try:
            argv = ["nghttp", "-v", "-d", str(run_dir / "request.bin")]
            for h in GRPC_HEADERS:
                argv += ["-H", h]
            argv.append(f"http://{HOST}:{port}{GRPC_PATH}")
            out = subprocess.run(argv, capture_output=True, timeout=15, stdin=subprocess.DEVNULL)
            text = out.stdout.decode(errors="replace")  # the frames, and the binary answer
        finally:
            stop([p])
    finally:
        stop(procs)
    grab = lambda f: re.findall(rf"recv \(stream_id=\d+\) {f}: (\S+)", text)  # noqa: E731
    got = ((grab(":status") or [None])[0], (grab("grpc-status") or [None])[-1],
           (grab("x-backend") or [None])[0])
    if got[:2] != ("200", "0"):
        raise RuntimeError(f"gRPC check through {name}: :status {got[0]}, grpc-status "
                           f"{got[1]}: {text[-400:]}")
    return got


def run(name, ports, seconds, run_dir, grpc):
    """One load run against `name`: rps, latencies (ms) and backend requests per request.
    HTTP uses the long-lived backends on `ports`; gRPC starts its own."""
    procs = []
    if grpc:
        procs, ports = start_backends(True, run_dir)
    try:
        port = free_port()
        p = start(name, ports, port, run_dir, grpc)
        try:
            if grpc:
                m = h2load(port, seconds, run_dir)
            else:
                before = backend_requests(ports)
                m = wrk(port, seconds)
                backend = backend_requests(ports) - before
        finally:
            stop([p])
    except BaseException:
        stop(procs)
        raise
    if grpc:
        backend = stop_grpc_backends(procs, run_dir)
    m["amplification"] = backend / max(m["n"], 1)
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grpc", action="store_true",
                    help="gRPC unary calls with h2load instead of HTTP/1.1 GETs with wrk")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    grpc = args.grpc
    tools = ["h2load", "nghttp"] if grpc else ["wrk"]
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        sys.exit(f"tail.py: needs {', '.join(missing)} (scripts/deps.sh bench installs them)")
    targets = ["corelb", "corelb-hedged"] + [t for t in ("nginx", "haproxy") if shutil.which(t)]
    unit = "call" if grpc else "request"
    procs, ports = [], []
    run_dir = Path(tempfile.mkdtemp(prefix="tail-"))
    res = {t: [] for t in targets}
    try:
        if grpc:
            (run_dir / "request.bin").write_bytes(synthesize_request(**REQUEST_FIELDS))
            for t in targets:
                status, grpc_status, backend = grpc_check(t, run_dir)
                print(f"gRPC check through {t}: :status {status}, grpc-status {grpc_status}, "
                      f"x-backend {backend}", flush=True)
        else:
            procs, ports = start_backends(False, run_dir)
        for r in range(args.reps):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for t in order:
                m = run(t, ports, args.seconds, run_dir, grpc)
                print(f"rep {r + 1} {t}: {m['rps']:.0f} {unit}s/s, p50 {m['p50']:.1f} ms, p99 "
                      f"{m['p99']:.1f} ms, p99.9 {m['p999']:.1f} ms, backend {unit}s per "
                      f"{unit} {m['amplification']:.3f}"
                      + (f", failed or non-2xx calls {m['bad']}" if grpc else ""), flush=True)
                res[t].append(m)
    finally:
        stop(procs)
        shutil.rmtree(run_dir, ignore_errors=True)
    med = {t: {k: statistics.median(m[k] for m in v) for k in v[0]} for t, v in res.items()}
    if grpc:
        cmd = shlex.join(h2load_argv("PORT", args.seconds, "request.bin", "LOG"))
        print(f"\n`{cmd}` (gRPC unary calls, `{json.dumps(REQUEST_FIELDS)}`), three "
              f"`corelb-backend --protocol grpc {' '.join(BACKEND_ARGS)}` backends stalling "
              f"2% of calls for 500 ms; corelb-hedged: `\"hedgingPolicy\": "
              f"{json.dumps(HEDGING_POLICY)}`; medians of {args.reps}:\n")
    else:
        print(f"\n`wrk -t2 -c{CLIENTS} -d{args.seconds}s`, three `corelb-backend "
              f"{' '.join(BACKEND_ARGS)}` backends stalling 2% of requests for 500 ms; "
              f"corelb-hedged: `--hedge-delay p95`; medians of {args.reps}:\n")
    print(f"| target | {unit}s/s | p50 ms | p99 ms | p99.9 ms | backend {unit}s per {unit} |")
    print("|---|---|---|---|---|---|")
    for t, m in med.items():
        print(f"| {t} | {m['rps']:.0f} | {m['p50']:.1f} | {m['p99']:.1f} | {m['p999']:.1f} | "
              f"{m['amplification']:.3f} |")
    base, hedged = med["corelb"], med["corelb-hedged"]
    print(f"\nhedged / unhedged corelb: p99 {hedged['p99'] / base['p99']:.2f}x, "
          f"p99.9 {hedged['p999'] / base['p999']:.2f}x")


if __name__ == "__main__":
    main()
