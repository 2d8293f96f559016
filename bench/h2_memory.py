#!/usr/bin/env python3
"""Memory per HTTP/2 (h2c) client connection: opens N prior-knowledge h2c connections to
a proxy (1 worker), each either with one slow stream open (GET /delay/60000 to an
HTTP/1.1 backend) or idle after one answered request, and compares the proxy's RSS
before and after. The slow case counts what the open stream costs too: its exchange,
its upstream connection and their buffers. Optionally the same against NGINX
(`listen ... http2`) and HAProxy (`bind ... proto h2`) in front of the same backend.

    python3 bench/h2_memory.py [--connections 2000] [--mode slow|idle|both] [--compare]
                               [--corelb-bin PATH]
"""

import argparse
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import HOST, children, free_port, rss_kib, stop, wait_port  # noqa: E402

BIN = ROOT / "target" / "release"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def get_block(path):
    """HPACK: :method GET, :scheme http (static), :path and :authority as literals with
    indexed names, never indexed in the dynamic table."""
    p = path.encode()
    return (b"\x82\x86" + b"\x04" + bytes([len(p)]) + p + b"\x01\x01x")




def open_conns(port, n, slow):
    """n h2c connections: each opens stream 1 (END_STREAM on its HEADERS) for a slow
    response, or for a quick one whose answer is read before the next connection."""
    socks = []
    path = "/delay/60000" if slow else "/"
    for _ in range(n):
        s = socket.create_connection((HOST, port))
        s.sendall(PREFACE + frame(4, 0, 0) + frame(1, 0x5, 1, get_block(path)))
        if not slow:
            s.settimeout(10)
            got = b""
            # Until a frame with END_STREAM on stream 1 (the answer) has come.
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
                if ends_stream_1(got):
                    break
        socks.append(s)
    return socks


def ends_stream_1(buf):
    i = 0
    while i + 9 <= len(buf):
        ln = int.from_bytes(buf[i:i + 3], "big")
        kind, flags = buf[i + 3], buf[i + 4]
        sid = int.from_bytes(buf[i + 5:i + 9], "big") & 0x7FFFFFFF
        if sid == 1 and kind in (0, 1) and flags & 0x1:
            return True
        i += 9 + ln
    return False


def measure(name, port, pids, n, slow):
    try:
        warm = open_conns(port, 50, slow)
        time.sleep(6.0)
        before = rss_kib(pids)
        socks = open_conns(port, n, slow)
        # Idle buffers go back to the pool and, after a few quiet seconds, to the OS.
        time.sleep(8.0)
        after = rss_kib(pids)
        for s in socks + warm:
            s.close()
        time.sleep(2.0)
        return name, "slow stream" if slow else "idle", n, before, after, (after - before) * 1024 / n
    except OSError as e:
        print(f"{name}: failed: {e}", file=sys.stderr)
        return name, "slow stream" if slow else "idle", n, 0, 0, float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--mode", choices=["slow", "idle", "both"], default="both")
    ap.add_argument("--compare", action="store_true", help="also NGINX and HAProxy")
    ap.add_argument("--corelb-bin", default=str(BIN / "corelb"), help="the corelb binary")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    modes = {"slow": [True], "idle": [False], "both": [True, False]}[a.mode]
    procs, results = [], []
    tmp = Path(tempfile.mkdtemp(prefix="corelb-h2mem-"))
    try:
        bport = free_port()
        procs.append(subprocess.Popen([str(BIN / "corelb-backend"), "--id", "A", "--port", str(bport),
                                       "--profile", "fast"], stdout=subprocess.DEVNULL))
        wait_port(bport)
        cfg = tmp / "c.json"
        cfg.write_text(f'{{"servers": [{{"name": "A", "address": "{HOST}", "port": {bport}}}],'
                       f' "healthCheck": {{"enabled": false}}}}')
        targets = []
        port = free_port()
        p = subprocess.Popen([a.corelb_bin, "--config", str(cfg), "--listen", f"{HOST}:{port}",
                              "--workers", "1", "--log-csv", "off", "--admin", "off",
                              "--idle-timeout", "300s", "--upstream-timeout", "300s"],
                             stdout=subprocess.DEVNULL)
        procs.append(p)
        wait_port(port)
        targets.append(("corelb (1 worker)", port, lambda: [p.pid]))
        if a.compare:
            nport, hport = free_port(), free_port()
            (tmp / "nginx.conf").write_text(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn; worker_rlimit_nofile 30000;
events {{ worker_connections 25000; }}
http {{ access_log off; keepalive_timeout 300s; proxy_read_timeout 300s;
  upstream b {{ server {HOST}:{bport}; keepalive 64; }}
  server {{ listen {HOST}:{nport} http2; location / {{ proxy_pass http://b;
    proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
            n = subprocess.Popen(["nginx", "-c", str(tmp / "nginx.conf")], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            procs.append(n)
            wait_port(nport)
            targets.append(("nginx (1 worker)", nport, lambda: children(n.pid)))
            (tmp / "haproxy.cfg").write_text(f"""global
  nbthread 1
  maxconn 9900
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  http-reuse always
frontend f
  bind {HOST}:{hport} proto h2
  default_backend b
backend b
  server s1 {HOST}:{bport}
""")
            h = subprocess.Popen(["haproxy", "-f", str(tmp / "haproxy.cfg"), "-db"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            procs.append(h)
            wait_port(hport)
            targets.append(("haproxy (1 thread)", hport, lambda: [h.pid]))
        for slow in modes:
            for name, port, pids in targets:
                results.append(measure(name, port, pids(), a.connections, slow))
    finally:
        stop(procs, timeout=10)
    print("| proxy | each connection | connections | RSS before (KiB) | RSS after (KiB) | bytes per connection |")
    print("|---|---|---:|---:|---:|---:|")
    for name, mode, n, before, after, per in results:
        print(f"| {name} | {mode} | {n} | {before} | {after} | {per:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
