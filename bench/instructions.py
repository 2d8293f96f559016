#!/usr/bin/env python3
"""User-space instructions per request of one or more corelb binaries, by callgrind.

Each binary runs with one worker under `valgrind --tool=callgrind` in front of one
`corelb-backend --profile fast`; h2load sends N tiny GETs, then the proxy is stopped with
SIGINT and callgrind's total (Ir) read. Two runs per binary, of LONG and SHORT requests:
(Ir(LONG) - Ir(SHORT)) / (LONG - SHORT) is the cost of one request without start-up and
shutdown. Binaries alternate (A, B, A, B ...) and each figure is the median of --reps.

  python3 bench/instructions.py [--h2c | --pair FRONT-BACK] [--reps 1] [--keep DIR] BIN [BIN ...]

--keep DIR: copy each callgrind output to DIR (named after the binary's checkout and N),
for `callgrind_annotate`.

--h2c: HTTP/2 (h2c prior knowledge) to corelb and h2c to the backend; else HTTP/1.1 both
ways (`h2load --h1`). --pair h1-h1, h2-h2c (as --h2c), h2-h1 or h1-h2c picks the client's
protocol and the backend's apart. The per-request CSV log is off (`--log-csv off`; its writer thread
costs about as much again per request) unless --csv-log. Instruction counts do not depend on the machine's speed or load,
which makes them the figure to compare when the CPU is shared.
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import free_port, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = os.path.join(ROOT, "target", "release", "corelb-backend")


def run(binary, n, pair, tmp, csv_log, keep=None):
    front_h2, h2c = pair
    bport, pport = free_port(), free_port()
    proto = ["--protocol", "h2c"] if h2c else []
    backend = subprocess.Popen(
        [BACKEND, "--id", "A", "--port", str(bport), "--profile", "fast"] + proto,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cfg = os.path.join(tmp, "cfg.json")
    server = {"name": "A", "address": "127.0.0.1", "port": bport}
    if h2c:
        server["protocol"] = "h2c"
    with open(cfg, "w") as f:
        json.dump({"servers": [server], "healthCheck": {"enabled": False}}, f)
    out = os.path.join(tmp, "callgrind.out")
    env = dict(os.environ, PROXY_SERVER_PORT=str(pport), PROXY_SERVER_CONFIG=cfg)
    proxy = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary,
         "--workers", "1"] + ([] if csv_log else ["--log-csv", "off"]),
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(bport, 10)
        wait_port(pport, 60)
        args = ["h2load", "-n", str(n), "-c", "10", "-t", "1"]
        if not front_h2:
            args.append("--h1")
        res = subprocess.run(args + [f"http://127.0.0.1:{pport}/"],
                             capture_output=True, text=True, timeout=600)
        ok = re.search(r"(\d+) succeeded", res.stdout)
        if not ok or int(ok.group(1)) != n:
            raise SystemExit(f"h2load: not all {n} requests succeeded:\n{res.stdout}")
    finally:
        proxy.send_signal(signal.SIGINT)
        try:
            proxy.wait(60)
        except subprocess.TimeoutExpired:
            proxy.kill()
        backend.kill()
        backend.wait()
    if keep:
        os.makedirs(keep, exist_ok=True)
        name = f"{os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(binary)))))}-{n}.out"
        import shutil
        shutil.copy(out, os.path.join(keep, name))
    with open(out) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit("no total in the callgrind output")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--h2c", action="store_true")
    ap.add_argument("--pair", choices=["h1-h1", "h2-h2c", "h2-h1", "h1-h2c"])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--csv-log", action="store_true")
    ap.add_argument("--short", type=int, default=10000)
    ap.add_argument("--long", type=int, default=30000)
    ap.add_argument("--keep", help="copy each callgrind output here (for callgrind_annotate)")
    a = ap.parse_args()
    name = a.pair or ("h2-h2c" if a.h2c else "h1-h1")
    pair = (name.startswith("h2-"), name.endswith("-h2c"))
    per = {b: [] for b in a.binaries}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.reps):
            for b in a.binaries:
                short = run(b, a.short, pair, tmp, a.csv_log, a.keep)
                long_ = run(b, a.long, pair, tmp, a.csv_log, a.keep)
                per[b].append((long_ - short) / (a.long - a.short))
                print(f"{b}: {per[b][-1]:.0f} instructions/request", flush=True)
    what = {
        "h1-h1": "HTTP/1.1 -> HTTP/1.1",
        "h2-h2c": "h2c -> h2c",
        "h2-h1": "h2c -> HTTP/1.1",
        "h1-h2c": "HTTP/1.1 -> h2c",
    }[name]
    print(f"\n{what}, h2load -c10, ({a.long} - {a.short}) requests, median of {a.reps}:")
    first = statistics.median(per[a.binaries[0]])
    for b in a.binaries:
        m = statistics.median(per[b])
        print(f"  {b}: {m:,.0f} instructions/request ({m / first:.3f}x the first)")


if __name__ == "__main__":
    main()
