#!/usr/bin/env python3
"""HTTP/2 CPU per request of two corelb binaries, alternately: h2load -t1 -c10 -m32
against each (1 worker) in front of three corelb-backends speaking h2c or HTTP/1.1;
proxy user+sys from /proc divided by the requests that succeeded; medians of REPS
(default 3) repetitions.

    REPS=7 python3 bench/h2_ab.py BASELINE_BIN h2c|http1 [REQUESTS]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import HOST, free_port, stop, wait_port  # noqa: E402

NEW = str(ROOT / "target" / "release" / "corelb")
BACK = str(ROOT / "target" / "release" / "corelb-backend")
BASE = sys.argv[1] if len(sys.argv) > 1 else ""
TICK = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK
def run(binary, cfg, n):
    port = free_port()
    p = subprocess.Popen([binary, "--config", cfg, "--listen", f"{HOST}:{port}", "--workers", "1",
                          "--log-csv", "off", "--admin", "off"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    subprocess.run(["h2load", "-t1", "-c10", "-m32", "-n", "20000", f"http://{HOST}:{port}/"], capture_output=True)
    c0 = cpu(p.pid); t0 = time.time()
    out = subprocess.run(["h2load", "-t1", "-c10", "-m32", "-n", str(n), f"http://{HOST}:{port}/"], capture_output=True, text=True).stdout
    t = time.time() - t0; c1 = cpu(p.pid)
    stop([p])
    ok = [l for l in out.splitlines() if "succeeded" in l][0]
    succ = int(ok.split("succeeded")[0].split(",")[-1].strip().split()[0])
    return (c1 - c0) / succ * 1e6, succ / t
def main():
    if len(sys.argv) < 3 or sys.argv[2] not in ("h2c", "http1"):
        sys.exit(__doc__)
    proto = sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200000
    procs = []
    ports = []
    for i in range(3):
        bp = free_port()
        args = [BACK, "--id", "ABC"[i], "--port", str(bp), "--profile", "fast"]
        if proto == "h2c": args += ["--protocol", "h2c"]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL)); wait_port(bp); ports.append(bp)
    cfg = tempfile.mktemp(suffix=".json")
    srv = ",".join(f'{{"name":"{"ABC"[i]}","address":"{HOST}","port":{p},"protocol":"{"h2c" if proto=="h2c" else "http1"}"}}' for i, p in enumerate(ports))
    open(cfg, "w").write(f'{{"servers":[{srv}],"healthCheck":{{"enabled":false}}}}')
    res = {"base": [], "new": []}
    try:
        for r in range(int(os.environ.get("REPS", "3"))):
            for name, b in (("base", BASE), ("new", NEW)):
                res[name].append(run(b, cfg, n))
    finally:
        stop(procs)
    for name in res:
        cpus = [x[0] for x in res[name]]; rps = [x[1] for x in res[name]]
        print(f"{proto} {name}: cpu/req us median {statistics.median(cpus):.2f} {['%.2f'%c for c in cpus]}  rps median {statistics.median(rps):.0f}")
    print(f"ratio new/base cpu: {statistics.median([x[0] for x in res['new']])/statistics.median([x[0] for x in res['base']]):.3f}")
if __name__ == "__main__":
    main()
