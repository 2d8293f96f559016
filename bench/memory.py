#!/usr/bin/env python3
"""corelb's memory under load, from /proc/PID/status (release binaries):

- idle: RSS per idle keep-alive client connection (bench/idle_memory.py's method: N
  connections, one request answered on each, left open, against a 100-connection warm-up);
- large: peak RSS (VmHWM, and the highest VmRSS sampled every 50 ms) while C clients
  download S bytes each at once through corelb from corelb-backend's /bytes/S route, each
  read with one bounded 64 KiB buffer; with splice (the default --splice-min and
  --notsent-lowat), with splice and --notsent-lowat off, and with --splice-min off (every
  byte copied through corelb's buffers). Beside corelb's RSS, the highest system-wide TCP
  memory sampled (/proc/net/sockstat: the socket queues of the clients, corelb and the
  backend together) shows what the kernel holds meanwhile.

Not a timing benchmark: the durations are printed only to show the runs were real.

    python3 bench/memory.py [--idle 10000] [--clients 1000] [--size 16777216] [--out DIR]
"""

import argparse
import datetime
import json
import platform
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import HOST, free_port, stop, wait_port  # noqa: E402
import idle_memory  # noqa: E402

BIN = ROOT / "target" / "release"


def status_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


NOTES = """Each download is read by one Python client (selectors, one 64 KiB buffer per read) from
`/bytes/16777216`; all 1,000 are opened and requested before any is read, so they are in
flight together. With splice (default `--splice-min 64KiB`) the bodies stay in the kernel's
pipes (256 KiB each, kernel memory, not in corelb's RSS): corelb's RSS grows only by the
16 KiB buffer that read each response head and the connection state. With `--splice-min
off` every body byte is copied through corelb's buffers, each bounded at 256 KiB
(buffer.rs, `BULK_MAX`), never the 16 GiB of the bodies. The system TCP memory is every
socket queue on the machine (the clients', corelb's and the backend's): with
`--notsent-lowat off` each client socket corelb splices into may queue up to its whole send
buffer of unsent bytes, with the default only 128 KiB. The seconds are not a benchmark (two
cores shared with other work and with the Python client, which is the bottleneck). Idle
figure: 10,000 idle keep-alive connections after a 100-connection warm-up, RSS read after
the worker trimmed its pool.

`cargo test --test memory` checks the same on debug binaries within `make test`: at most
256 B of RSS per idle connection, and VmHWM under 600 MiB with 1,000 concurrent 16 MiB
downloads.
"""


def tcp_mem_kib():
    """System-wide memory of TCP socket queues, from /proc/net/sockstat (pages)."""
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            f = line.split()
            return int(f[f.index("mem") + 1]) * resource.getpagesize() // 1024
    raise RuntimeError("no TCP line in /proc/net/sockstat")


def start(tmp, workers, extra):
    bport = free_port()
    backend = subprocess.Popen([str(BIN / "corelb-backend"), "--id", "A", "--port", str(bport),
                                "--profile", "fast", "--threads", "2"], stdout=subprocess.DEVNULL)
    wait_port(bport)
    cfg = tmp / "c.json"
    cfg.write_text(f'{{"servers": [{{"name": "A", "address": "{HOST}", "port": {bport}}}]}}')
    port = free_port()
    proxy = subprocess.Popen([str(BIN / "corelb"), "--config", str(cfg), "--listen", f"{HOST}:{port}",
                              "--workers", str(workers), "--log-csv", "off", "--admin", "off",
                              "--health-check", "off", "--idle-timeout", "300s"] + extra,
                             stdout=subprocess.DEVNULL)
    wait_port(port)
    return backend, proxy, port


def downloads(port, pid, clients, size):
    """clients downloads of /bytes/size at once; returns (seconds, bytes, peak VmRSS,
    peak system TCP memory), both in KiB."""
    sel = selectors.DefaultSelector()
    req = f"GET /bytes/{size} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    state = {}
    for _ in range(clients):
        s = socket.create_connection((HOST, port))
        s.sendall(req)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        state[s] = [b"", None]  # head bytes, body bytes received (None: in the head)
    buf = bytearray(64 * 1024)
    view = memoryview(buf)
    total, peak, tcp, t0 = 0, 0, 0, time.monotonic()
    next_sample = t0
    while state:
        now = time.monotonic()
        if now >= next_sample:
            peak = max(peak, status_kib(pid, "VmRSS:"))
            tcp = max(tcp, tcp_mem_kib())
            next_sample = now + 0.05
        if now - t0 > 600:
            raise RuntimeError(f"{len(state)} downloads unfinished after 600 s")
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            st = state[s]
            while True:
                try:
                    n = s.recv_into(buf)
                except BlockingIOError:
                    break
                if n == 0:
                    raise RuntimeError(f"EOF after {st[1]} body bytes")
                data = view[:n]
                if st[1] is None:
                    st[0] += bytes(data)
                    at = st[0].find(b"\r\n\r\n")
                    if at < 0:
                        continue
                    if not st[0].startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(st[0][:80])
                    data = view[n - (len(st[0]) - at - 4):n]
                    st[0], st[1] = b"", 0
                if len(data) and data[0] != ord("a") + st[1] % 26:
                    raise RuntimeError(f"wrong byte at {st[1]}")
                st[1] += len(data)
                total += len(data)
                if st[1] > size:
                    raise RuntimeError("more bytes than asked for")
                if st[1] == size:
                    sel.unregister(s)
                    s.close()
                    del state[s]
                    break
    return time.monotonic() - t0, total, peak, tcp


def large(tmp, clients, size, extra):
    backend, proxy, port = start(tmp, 2, extra)
    try:
        time.sleep(0.5)
        base = status_kib(proxy.pid, "VmHWM:")
        secs, total, peak, tcp = downloads(port, proxy.pid, clients, size)
        hwm = status_kib(proxy.pid, "VmHWM:")
    finally:
        stop([proxy, backend])
    return {"clients": clients, "size": size, "flags": extra, "seconds": round(secs, 1),
            "bytes": total, "vmhwm_start_kib": base, "vmhwm_kib": hwm, "peak_vmrss_kib": peak,
            "peak_tcp_mem_kib": tcp}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=int, default=10000, help="idle connections (0: skip)")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--size", type=int, default=16 << 20)
    ap.add_argument("--out", help="write summary.md and results.json here")
    a = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="corelb-memory-"))
    results = {"date": datetime.date.today().isoformat(), "host": platform.node(),
               "kernel": platform.release(), "command": " ".join(["python3", "bench/memory.py"] + sys.argv[1:])}
    if a.idle:
        backend, proxy, port = start(tmp, 1, [])
        try:
            name, n, before, after, per = idle_memory.measure("corelb (1 worker)", port, [proxy.pid], a.idle)
        finally:
            stop([proxy, backend])
        results["idle"] = {"connections": n, "rss_before_kib": before, "rss_after_kib": after,
                           "bytes_per_connection": round(per)}
        print(f"idle: {n} keep-alive connections: VmRSS {before} -> {after} KiB, {per:.0f} B each")
    results["large"] = []
    for extra in ([], ["--notsent-lowat", "off"], ["--splice-min", "off"]):
        r = large(tmp, a.clients, a.size, extra)
        results["large"].append(r)
        print(f"large {' '.join(extra) or '(splice)'}: {r['clients']} x {r['size'] >> 20} MiB "
              f"({r['bytes'] >> 20} MiB in {r['seconds']} s): VmHWM {r['vmhwm_start_kib']} KiB at start, "
              f"{r['vmhwm_kib']} KiB after, highest VmRSS sampled {r['peak_vmrss_kib']} KiB, "
              f"highest system TCP memory {r['peak_tcp_mem_kib']} KiB")
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        lines = [f"# corelb memory ({results['date']}, {results['host']}, kernel {results['kernel']})", "",
                 f"Command: `{results['command']}` (release binaries, corelb-backend `--profile fast`).", ""]
        if "idle" in results:
            i = results["idle"]
            lines += ["| idle keep-alive connections | VmRSS before (KiB) | VmRSS after (KiB) | bytes per connection |",
                      "|---:|---:|---:|---:|",
                      f"| {i['connections']} | {i['rss_before_kib']} | {i['rss_after_kib']} | {i['bytes_per_connection']} |", ""]
        lines += ["| concurrent downloads | corelb flags | MiB moved | seconds | VmHWM at start (KiB) | VmHWM after (KiB) | highest VmRSS sampled (KiB) | highest system TCP memory (KiB) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in results["large"]:
            lines.append(f"| {r['clients']} x {r['size'] >> 20} MiB | `{' '.join(['--workers', '2'] + r['flags'])}` "
                         f"| {r['bytes'] >> 20} | {r['seconds']} | {r['vmhwm_start_kib']} | {r['vmhwm_kib']} "
                         f"| {r['peak_vmrss_kib']} | {r['peak_tcp_mem_kib']} |")
        (out / "summary.md").write_text("\n".join(lines) + "\n\n" + NOTES)


if __name__ == "__main__":
    sys.exit(main())
