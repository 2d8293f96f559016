#!/usr/bin/env python3
"""Tail latency with hedged requests: three `corelb-backend --profile fixed:2 --stall
0.02:500` servers (each stalls 2% of its requests for 500 ms, a pause like a garbage
collection, and answers the rest in about 2 ms); `wrk -t2 -c32 -d SECONDS` (GET /)
through corelb without hedging, corelb with `--hedge-delay p95`, NGINX and HAProxy (round
robin, upstream keep-alive), 1 worker or thread each, alternating, medians of REPS.
Latencies are wrk's (bench/report.lua); backend requests are the backends' own counters,
per client request.

    python3 bench/tail.py [--seconds 10] [--reps 3]
"""

import argparse
import json
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
from benchlib import HOST, children, free_port, stop, wait_port  # noqa: E402

BENCH = ROOT / "bench"
BIN = ROOT / "target" / "release"


def backend_requests(ports):
    total = 0
    for p in ports:
        with urllib.request.urlopen(f"http://{HOST}:{p}/stats", timeout=5) as r:
            total += json.load(r)["requests"]
    return total


def start(name, ports, port, run_dir):
    if name.startswith("corelb"):
        cfg = run_dir / "corelb.json"
        srv = ",".join(f'{{"name":"B{i}","address":"{HOST}","port":{p}}}' for i, p in enumerate(ports))
        cfg.write_text(f'{{"servers":[{srv}],"healthCheck":{{"enabled":false}}}}')
        args = [str(BIN / "corelb"), "--config", str(cfg), "--listen", f"{HOST}:{port}",
                "--workers", "1", "--log-csv", "off", "--admin", "off", "--mode", "round-robin",
                "--eject-after", "0"]
        if name == "corelb-hedged":
            args += ["--hedge-delay", "p95"]
    elif name == "haproxy":
        servers = "\n".join(f"    server B{i} {HOST}:{p}" for i, p in enumerate(ports))
        cfg = run_dir / "haproxy.cfg"
        cfg.write_text(Template((BENCH / "haproxy.cfg.tmpl").read_text()).substitute(
            threads=1, dir=run_dir, port=port, servers=servers, balance="roundrobin"))
        args = ["haproxy", "-db", "-f", str(cfg)]
    else:
        (run_dir / "tmp").mkdir(exist_ok=True)
        servers = "\n".join(f"        server {HOST}:{p};" for p in ports)
        cfg = run_dir / "nginx.conf"
        cfg.write_text(Template((BENCH / "nginx.conf.tmpl").read_text()).substitute(
            workers=1, dir=run_dir, port=port, servers=servers,
            balance="# round robin (the default)", tuning="# no extra settings"))
        args = ["nginx", "-c", str(cfg), "-p", str(run_dir)]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    wait_port(port)
    return p


def run(name, ports, seconds, run_dir):
    port = free_port()
    p = start(name, ports, port, run_dir)
    try:
        before = backend_requests(ports)
        out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", str(BENCH / "report.lua"),
                              f"http://{HOST}:{port}/"], capture_output=True, text=True,
                             timeout=seconds + 60).stdout
        after = backend_requests(ports)
    finally:
        stop([p])
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON"))
    r = json.loads(line.split(" ", 1)[1])
    pct = dict((p, v) for p, v in r["latency_us"]["percentiles"])
    n = r["requests"]
    return {"rps": n / (r["duration_us"] / 1e6), "p50": pct[50] / 1000, "p99": pct[99] / 1000,
            "p999": pct[99.9] / 1000, "amplification": (after - before) / max(n, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    targets = ["corelb", "corelb-hedged"] + [t for t in ("nginx", "haproxy") if shutil.which(t)]
    procs, ports = [], []
    run_dir = Path(tempfile.mkdtemp(prefix="tail-"))
    res = {t: [] for t in targets}
    try:
        for i in range(3):
            bp = free_port()
            procs.append(subprocess.Popen(
                [str(BIN / "corelb-backend"), "--id", f"B{i}", "--port", str(bp), "--profile",
                 "fixed:2", "--stall", "0.02:500", "--seed", str(i + 1)],
                stdout=subprocess.DEVNULL))
            wait_port(bp)
            ports.append(bp)
        for r in range(args.reps):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for t in order:
                m = run(t, ports, args.seconds, run_dir)
                print(f"rep {r + 1} {t}: {m['rps']:.0f} req/s, p50 {m['p50']:.1f} ms, p99 "
                      f"{m['p99']:.1f} ms, p99.9 {m['p999']:.1f} ms, backend requests per "
                      f"request {m['amplification']:.3f}", flush=True)
                res[t].append(m)
    finally:
        stop(procs)
        shutil.rmtree(run_dir, ignore_errors=True)
    med = {t: {k: statistics.median(m[k] for m in v) for k in v[0]} for t, v in res.items()}
    print(f"\n`wrk -t2 -c32 -d{args.seconds}s`, three backends stalling 2% of requests for 500 ms, "
          f"medians of {args.reps}:\n")
    print("| target | requests/s | p50 ms | p99 ms | p99.9 ms | backend requests per request |")
    print("|---|---|---|---|---|---|")
    for t, m in med.items():
        print(f"| {t} | {m['rps']:.0f} | {m['p50']:.1f} | {m['p99']:.1f} | {m['p999']:.1f} | "
              f"{m['amplification']:.3f} |")
    base, hedged = med["corelb"], med["corelb-hedged"]
    print(f"\nhedged / unhedged corelb: p99 {hedged['p99'] / base['p99']:.2f}x, "
          f"p99.9 {hedged['p999'] / base['p999']:.2f}x")


if __name__ == "__main__":
    main()
