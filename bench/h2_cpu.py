#!/usr/bin/env python3
"""HTTP/2 CPU per request, h2c client to h2c backends, corelb against HAProxy and NGINX in
the same run: `h2load -t1 -c10 -m32 -n N` (GET /) through each proxy (1 worker or thread)
in front of three `corelb-backend --protocol h2c --profile fast` servers; targets
alternate in every repetition; the proxy's user+sys from /proc (NGINX: master and
workers) divided by the requests that succeeded; medians of REPS (default 3).

HAProxy: `bind ... proto h2`, `server ... proto h2`, `http-reuse always` (streams share
its upstream connections). NGINX: `listen ... http2` and `grpc_pass` (its only HTTP/2
upstream; one request per upstream connection).

    python3 bench/h2_cpu.py [--requests 300000] [--reps 3] [--corelb-bin PATH]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import HOST, children, free_port, stop, wait_port  # noqa: E402

BENCH = ROOT / "bench"
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pids):
    total = 0
    for pid in pids:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(f[11]) + int(f[12])
    return total / TICK


def start(name, corelb, ports, port, run_dir):
    """Starts proxy `name` on `port`; returns (its process, the pids to account)."""
    if name == "corelb":
        cfg = run_dir / "corelb.json"
        srv = ",".join(f'{{"name":"B{i}","address":"{HOST}","port":{p},"protocol":"h2c"}}'
                       for i, p in enumerate(ports))
        cfg.write_text(f'{{"servers":[{srv}],"healthCheck":{{"enabled":false}}}}')
        args = [corelb, "--config", str(cfg), "--listen", f"{HOST}:{port}", "--workers", "1",
                "--log-csv", "off", "--admin", "off"]
    elif name == "haproxy":
        servers = "\n".join(f"    server B{i} {HOST}:{p} proto h2" for i, p in enumerate(ports))
        cfg = run_dir / "haproxy.cfg"
        cfg.write_text(Template((BENCH / "haproxy-h2.cfg.tmpl").read_text()).substitute(
            threads=1, dir=run_dir, port=port, servers=servers, balance="roundrobin"))
        args = ["haproxy", "-f", str(cfg)]
    else:
        (run_dir / "tmp").mkdir(exist_ok=True)
        servers = "\n".join(f"        server {HOST}:{p};" for p in ports)
        cfg = run_dir / "nginx.conf"
        cfg.write_text(Template((BENCH / "nginx-grpc.conf.tmpl").read_text()).substitute(
            workers=1, dir=run_dir, port=port, servers=servers, balance=""))
        args = ["nginx", "-c", str(cfg), "-p", str(run_dir)]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    wait_port(port)
    pids = [p.pid] + (children(p.pid) if name == "nginx" else [])
    return p, pids


def h2load(port, n):
    out = subprocess.run(["h2load", "-t1", "-c10", "-m32", "-n", str(n), f"http://{HOST}:{port}/"],
                         capture_output=True, text=True, timeout=300).stdout
    line = [x for x in out.splitlines() if "succeeded" in x][0]
    return int(line.split("succeeded")[0].split(",")[-1].strip().split()[0])


def run(name, corelb, ports, n, run_dir):
    port = free_port()
    p, pids = start(name, corelb, ports, port, run_dir)
    try:
        h2load(port, 20000)  # warm-up: connections, pools, tables
        c0, t0 = cpu(pids), time.time()
        ok = h2load(port, n)
        t, c1 = time.time() - t0, cpu(pids)
    finally:
        stop([p])
    return (c1 - c0) / max(ok, 1) * 1e6, ok / t, ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--corelb-bin", default=str(ROOT / "target" / "release" / "corelb"))
    args = ap.parse_args()
    targets = ["corelb"] + [t for t in ("haproxy", "nginx") if shutil.which(t)]
    backend = str(ROOT / "target" / "release" / "corelb-backend")
    procs, ports = [], []
    run_dir = Path(tempfile.mkdtemp(prefix="h2cpu-"))
    res = {t: [] for t in targets}
    try:
        for i in range(3):
            bp = free_port()
            procs.append(subprocess.Popen([backend, "--id", f"B{i}", "--port", str(bp), "--profile",
                                           "fast", "--protocol", "h2c"], stdout=subprocess.DEVNULL))
            wait_port(bp)
            ports.append(bp)
        for r in range(args.reps):
            # Rotated order: no target always runs first (or right after another).
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for t in order:
                us, rps, ok = run(t, args.corelb_bin, ports, args.requests, run_dir)
                print(f"rep {r + 1} {t}: {us:.2f} µs/request, {rps:.0f} req/s, {ok} ok", flush=True)
                res[t].append((us, rps))
    finally:
        stop(procs)
        shutil.rmtree(run_dir, ignore_errors=True)
    med = {t: (statistics.median(u for u, _ in v), statistics.median(r for _, r in v))
           for t, v in res.items()}
    print(f"\n`h2load -t1 -c10 -m32 -n {args.requests}`, h2c -> 3 h2c backends, 1 worker/thread, "
          f"medians of {args.reps}:\n")
    print("| proxy | CPU per request | requests/s | CPU vs corelb |")
    print("|---|---|---|---|")
    for t, (us, rps) in med.items():
        print(f"| {t} | {us:.2f} µs | {rps / 1000:.0f}k | {us / med['corelb'][0]:.2f}x |")
    for t in targets[1:]:
        print(f"\ncorelb / {t} CPU per request: {med['corelb'][0] / med[t][0]:.2f}")


if __name__ == "__main__":
    main()
