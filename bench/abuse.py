#!/usr/bin/env python3
"""Runs the abuse scenarios of tests/abuse.rs at full size and prints their figures.

The scenarios (loopback only, bounded in count and time, one at a time):
  many_clients  10,000 keep-alive clients (fewer if the fd hard limit is lower) held at
                once against 1 worker, 3 requests each, 25 in flight per 500 clients;
  slowloris     2,000 connections sending one head byte a second for 6 s against a 3 s
                head timeout, while one client measures GET latency (p99 before/during);
  resets        1,000 clients that send part of a request and reset (SO_LINGER 0), half
                while their exchange is in flight; gauges before, mid-attack and after;
  h2_*          HTTP/2 stalled readers (20 connections x 5 streams that never open their
                window, against a 2 s send timeout); HTTP/2 reset floods, 3 connections
                of up to 3,000 streams each: streams
                corelb is made to reset (MadeYouReset) and streams the client resets
                (rapid reset); streams sent before GOAWAY, backend requests and connections.

Sizes: ABUSE_CLIENTS, ABUSE_SLOWLORIS, ABUSE_RESETS, ABUSE_H2_STREAMS (environment). Usage:
  make abuse            or    python3 bench/abuse.py
"""
import os
import re
import subprocess
import sys
import time


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(["cargo", "build", "--workspace", "--bins"], cwd=root, check=True)
    t0 = time.time()
    run = subprocess.run(
        ["cargo", "test", "--test", "abuse", "--", "--nocapture", "--test-threads", "1"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # The harness may print "test name ... " on the same line before the figures.
    lines = [l[l.index("ABUSE "):] for l in run.stdout.splitlines() if "ABUSE " in l]
    for line in lines:
        name, rest = line[len("ABUSE "):].split(" ", 1)
        print(f"== {name}")
        # key=value pairs; values may be Debug structs with spaces ({ ... }).
        for key, val in re.findall(r"(\w+)=((?:\w+ )?\{[^}]*\}|\S+)", rest):
            print(f"  {key:24} {val}")
    print(f"== {len(lines)} scenarios in {time.time() - t0:.1f} s, cargo test exit {run.returncode}")
    if run.returncode != 0:
        tail = run.stdout.splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
