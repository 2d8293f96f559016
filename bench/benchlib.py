"""Small helpers shared by the standalone bench scripts (failover.py, idle_memory.py,
h2_memory.py, memory.py)."""

import signal
import socket
import subprocess
import time

HOST = "127.0.0.1"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, limit: float = 10.0) -> None:
    """Waits until something accepts connections on `port`."""
    end = time.time() + limit
    while time.time() < end:
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def stop(procs, timeout: float = 15.0) -> None:
    """SIGTERM to every process, then waits for each; one still running after `timeout`
    seconds is killed."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def rss_kib(pids) -> int:
    """The summed VmRSS of `pids`, in KiB."""
    total = 0
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def children(pid: int) -> list:
    """The pids of `pid`'s children (NGINX's workers)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]
