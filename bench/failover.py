#!/usr/bin/env python3
"""Failover bench: wrk through corelb to three backends; one is SIGKILLed a third of the way
in and restarted at two thirds. Reports non-2xx answers and socket errors (the target is
zero of each), when the proxy's debug log saw the server go down and come back, and when
the CSV log shows its traffic stop and resume. Runs every routing mode in both upstream
modes.

    python3 bench/failover.py [--seconds 30] [--modes round-robin,...] [--upstreams ...]

Results: bench/results/<date>-<host>/failover.md (raw logs under raw/failover/).
"""

import argparse
import csv
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import HOST, free_port, wait_port  # noqa: E402

BIN = ROOT / "target" / "release"
LUA = ROOT / "bench" / "report.lua"


def modes() -> list:
    out = subprocess.run([str(BIN / "corelb"), "--mode", "nonexistent"], capture_output=True, text=True)
    m = re.search(r"known: (.*)$", out.stderr.strip())
    return [x.strip() for x in m.group(1).split(",")] if m else ["round-robin"]


def backend(id_: str, port: int, log: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [str(BIN / "corelb-backend"), "--id", id_, "--port", str(port), "--profile", "fast"],
        stdout=subprocess.DEVNULL, stderr=open(log, "ab"),
    )
    wait_port(port)
    return p


def run_one(mode: str, upstream: str, seconds: int, out: Path, interval: float) -> dict:
    raw = out / "raw" / "failover"
    raw.mkdir(parents=True, exist_ok=True)
    tag = f"{mode}_{upstream}"
    ports = [free_port() for _ in range(3)]
    cfg = {
        "heartbeatInterval": interval,
        "heartbeatTimeout": interval,
        "servers": [{"name": n, "address": HOST, "port": p} for n, p in zip("ABC", ports)],
    }
    cfg_path = raw / f"{tag}.json"
    cfg_path.write_text(json.dumps(cfg))
    procs = {}
    try:
        for n, p in zip("ABC", ports):
            procs[n] = backend(n, p, raw / f"{tag}_backend.log")
        listen = free_port()
        csv_path = raw / f"{tag}.csv"
        debug_log = raw / f"{tag}_debug.log"
        proxy = subprocess.Popen(
            [str(BIN / "corelb"), mode, "--config", str(cfg_path), "--upstream", upstream,
             "--listen", f"{HOST}:{listen}", "--log-csv", str(csv_path), "-d"],
            stdout=subprocess.DEVNULL, stderr=open(debug_log, "wb"),
        )
        procs["proxy"] = proxy
        wait_port(listen)
        wrk = subprocess.Popen(
            ["wrk", "-t4", "-c100", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA),
             f"http://{HOST}:{listen}/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        start = time.time()
        time.sleep(seconds / 3)
        procs["B"].send_signal(signal.SIGKILL)
        procs["B"].wait()
        killed = time.time()
        time.sleep(max(0.0, start + 2 * seconds / 3 - time.time()))
        procs["B"] = backend("B", ports[1], raw / f"{tag}_backend.log")
        restarted = time.time()
        text, _ = wrk.communicate(timeout=seconds + 30)
        (raw / f"{tag}_wrk.txt").write_text(text)
        proxy.send_signal(signal.SIGINT)
        proxy.wait(timeout=30)
        line = next((l for l in text.splitlines() if l.startswith("BENCH_JSON ")), None)
        res = json.loads(line[len("BENCH_JSON "):]) if line else {}
        errs = res.get("errors", {})
        socket_errors = sum(int(errs.get(k) or 0) for k in ("connect", "read", "write", "timeout"))
        # When did B's traffic stop and resume, from the CSV?
        b_url = f"http://{HOST}:{ports[1]}"
        b_times = []
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                if row["backend_url"] == b_url:
                    b_times.append(float(row["timestamp"]))
        last_before = max((t for t in b_times if t <= killed + 5), default=None)
        first_after = min((t for t in b_times if t >= restarted), default=None)
        log = debug_log.read_text(errors="replace")
        return {
            "mode": mode,
            "upstream": upstream,
            "requests": int(res.get("requests") or 0),
            "non2xx": int(errs.get("status") or 0),
            "socket_errors": socket_errors,
            "b_last_after_kill": None if last_before is None else last_before - killed,
            "b_back_after_restart": None if first_after is None else first_after - restarted,
            "down_logged": "is DOWN" in log,
            "up_logged": "is UP" in log,
            "retries_logged": len(re.findall(r"retrying on", log)),
        }
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("FAILOVER_SECONDS", "30")))
    ap.add_argument("--modes", default="")
    ap.add_argument("--upstreams", default="persistent,per-request")
    ap.add_argument("--interval", type=float, default=1.0, help="heartbeatInterval (s)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        print("failover: wrk is missing (scripts/deps.sh bench installs it)", file=sys.stderr)
        return 1
    host = socket.gethostname()
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / f"{datetime.date.today()}-{host}"
    out.mkdir(parents=True, exist_ok=True)
    ms = [m for m in a.modes.split(",") if m] or modes()
    rows = []
    for up in a.upstreams.split(","):
        for m in ms:
            print(f"failover: {m} {up} ({a.seconds}s)", file=sys.stderr, flush=True)
            rows.append(run_one(m, up, a.seconds, out, a.interval))
            r = rows[-1]
            print(f"  requests={r['requests']} non2xx={r['non2xx']} socket_errors={r['socket_errors']}",
                  file=sys.stderr, flush=True)
    fmt = lambda v: "-" if v is None else f"{v:+.2f}"
    lines = [
        "# Failover: SIGKILL one of three backends, then restart it",
        "",
        f"`wrk -t4 -c100 -d{a.seconds}s` through corelb to three `fast` backends; B is killed at "
        f"{a.seconds / 3:.0f} s and restarted at {2 * a.seconds / 3:.0f} s; heartbeatInterval "
        f"{a.interval} s, rise 2, fall 3. Machine: {os.cpu_count()} cores, `{os.uname().release}`.",
        "",
        "| mode | upstream | requests | non-2xx | socket errors | B's last answer after kill (s) "
        "| B's first answer after restart (s) | DOWN/UP in debug log | retries |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['upstream']} | {r['requests']} | {r['non2xx']} | {r['socket_errors']} | "
            f"{fmt(r['b_last_after_kill'])} | {fmt(r['b_back_after_restart'])} | "
            f"{'yes' if r['down_logged'] else 'no'}/{'yes' if r['up_logged'] else 'no'} | {r['retries_logged']} |"
        )
    (out / "failover.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    bad = [r for r in rows if r["non2xx"] or r["socket_errors"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
