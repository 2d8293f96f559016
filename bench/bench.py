#!/usr/bin/env python3
"""corelb benchmark harness behind `make bench` (full), `make bench-quick`, `make bench-sizes`
and `make bench-ab`.

Starts corelb-backend, corelb, NGINX and HAProxy on loopback ports in 18100-18199, drives
them with wrk (latency from bench/report.lua's done() hook, never wrk's text), and writes
bench/results/<date>-<host>[-quick][-<only>]/: summary.md, results.json, commands.txt, PNG
plots and raw/ (wrk outputs and scripts, corelb's HDR dumps and CSV logs, process logs,
generated configs). Scenarios: seed, speed, queue, sizes (body sizes, both directions) and,
when named in --only, ab (two corelb binaries, CPU per request).

Stdlib plus matplotlib; without matplotlib the summary is written without plots.
Every process it starts runs in its own session and is stopped on exit, error or Ctrl-C.
"""

import argparse
import atexit
import dataclasses
import datetime
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import site
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = ROOT / "target" / "release"
CORELB = BIN / "corelb"
BACKEND = BIN / "corelb-backend"
REPORT_LUA = BENCH / "report.lua"

PORT_RANGE = range(18100, 18200)
HOST = "127.0.0.1"
WRK_TIMEOUT = "10s"  # longer than the queue scenario's worst queueing, so slow answers count
SEED_MODES = ["round-robin", "adaptive_sma", "adaptive_ewma"]
FULL_SECONDS = 30
QUICK_SECONDS = 3
PAUSE_BETWEEN_RUNS = 0.3

KiB, MiB = 1 << 10, 1 << 20
# The sizes scenario: body sizes of the downloads and uploads, and of a quick run.
SIZES = [0, 4 * KiB, 64 * KiB, MiB, 16 * MiB]
QUICK_SIZES = [4 * KiB, MiB]
# BENCH_SIZES=0,1048576,16777216 picks some of them (bytes, comma-separated).
if os.environ.get("BENCH_SIZES"):
    SIZES = [int(x) for x in os.environ["BENCH_SIZES"].split(",")]
# Its runs last this long unless --seconds or BENCH_SECONDS says otherwise: 40 targets x 3
# repetitions of 30 s would add an hour to `make bench`, and bulk transfers settle fast.
SIZES_SECONDS = 10
KIND_COLORS = {"corelb": "#2b6cb0", "nginx": "#2f855a", "haproxy": "#c05621",
               "direct": "#718096"}
KIND_LABELS = {"direct": "direct", "corelb": "corelb", "nginx": "NGINX", "haproxy": "HAProxy"}


class BenchError(Exception):
    """A failure of one run or scenario: reported in the summary, never a crash."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: stop like on Ctrl-C (not an Exception, so nothing swallows it)."""


def log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


# ---------------------------------------------------------------------------------------
# Tools: wrk, nginx, haproxy from apt; matplotlib from a venv (bench/.venv) or pip --user.


def ensure_matplotlib(notes: list) -> bool:
    """Imports matplotlib, or installs it into bench/.venv and re-executes this script there."""
    if importlib.util.find_spec("matplotlib"):
        return True
    venv_py = BENCH / ".venv" / "bin" / "python"
    if not os.environ.get("CORELB_BENCH_REEXEC"):
        try:
            if not venv_py.exists():
                log("matplotlib missing: creating bench/.venv")
                subprocess.run([sys.executable, "-m", "venv", str(BENCH / ".venv")], check=True)
            ok = subprocess.run([str(venv_py), "-c", "import matplotlib"],
                                capture_output=True).returncode == 0
            if not ok:
                log("installing matplotlib into bench/.venv (pip)")
                subprocess.run([str(venv_py), "-m", "pip", "install", "-q", "matplotlib"],
                               check=True, timeout=900)
            os.environ["CORELB_BENCH_REEXEC"] = "1"
            sys.stdout.flush()
            os.execv(str(venv_py), [str(venv_py), str(Path(__file__).resolve()), *sys.argv[1:]])
        except (OSError, subprocess.SubprocessError) as e:
            log(f"venv install of matplotlib failed ({e}); trying pip install --user")
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--user", "matplotlib"],
                       check=True, timeout=900)
        site.addsitedir(site.getusersitepackages())
        importlib.invalidate_caches()
        importlib.import_module("matplotlib")
        return True
    except Exception as e:  # any failure here only costs the plots
        notes.append(f"matplotlib could not be installed ({type(e).__name__}): "
                     "summary written without plots.")
        return False


class Apt:
    """Makes sure the benchmark's tools are here through scripts/deps.sh, the one list of
    packages (it installs them as root with apt-get), once per run."""

    def __init__(self, logfile: Path):
        self.ran = False
        self.logfile = logfile

    def ensure(self, cmd: str) -> Optional[str]:
        """Returns None if `cmd` is (now) available, else a one-line reason."""
        if shutil.which(cmd):
            return None
        if not self.ran:
            log(f"{cmd} missing: scripts/deps.sh bench")
            with open(self.logfile, "ab") as out:
                subprocess.run([str(ROOT / "scripts" / "deps.sh"), "bench"], stdout=out,
                               stderr=out)
            self.ran = True
        if shutil.which(cmd):
            return None
        return f"{cmd} not found; raw/apt.log has the command scripts/deps.sh bench suggests"


# ---------------------------------------------------------------------------------------
# Processes and ports.


class Supervisor:
    """Starts processes in their own sessions, records their commands, stops them all."""

    def __init__(self) -> None:
        self.procs: list = []
        self.commands: list = []

    def record(self, argv: list) -> None:
        self.commands.append(shlex.join(str(a) for a in argv))

    def start(self, argv: list, logfile: Path) -> subprocess.Popen:
        argv = [str(a) for a in argv]
        self.record(argv)
        with open(logfile, "wb") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM,
             timeout: float = 10.0) -> Optional[int]:
        """Sends `sig`, then SIGTERM, then kills the process group. Returns the exit code."""
        for s in dict.fromkeys([sig, signal.SIGTERM]):
            if p.poll() is not None:
                break
            try:
                os.kill(p.pid, s)
                p.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                log(f"pid {p.pid} ({os.path.basename(p.args[0])}) still running "
                    f"{timeout:.0f}s after {signal.Signals(s).name}")
        if p.poll() is None:
            # Not reaped yet, so the group (id = pid, own session) is still this one's;
            # it holds the children too (nginx workers).
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        rc = p.wait()
        if p in self.procs:
            self.procs.remove(p)
        return rc

    def stop_all(self) -> None:
        for p in list(reversed(self.procs)):
            self.stop(p, signal.SIGTERM, 5.0)


def port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((HOST, port))
        s.listen(1)
        return True
    except OSError:
        return False
    finally:
        s.close()


def take_ports(n: int) -> list:
    """The first `n` free ports of PORT_RANGE."""
    free = [p for p in PORT_RANGE if port_free(p)][:n]
    if len(free) < n:
        raise BenchError(f"need {n} free ports in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}, "
                         f"found {len(free)}")
    return free


def wait_free(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_free(port):
        if time.monotonic() > deadline:
            raise BenchError(f"port {port} is in use by another process")
        time.sleep(0.1)


def wait_listening(port: int, proc: Optional[subprocess.Popen], logfile: Optional[Path],
                   timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"exited with code {proc.returncode} before listening: "
                             f"{tail(logfile)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"not listening on {port} after {timeout:.0f}s: {tail(logfile)}")
        time.sleep(0.05)


def tail(path: Optional[Path], n: int = 3) -> str:
    if path is None or not path.exists():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[:400]


def http_get(port: int, path: str, timeout: float = 2.0) -> str:
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode(errors="replace").split("\r\n\r\n", 1)[-1]


def backend_requests(port: int) -> Optional[int]:
    """The backend's counted requests (its /stats route), or None."""
    try:
        return int(json.loads(http_get(port, "/stats"))["requests"])
    except (OSError, ValueError, KeyError):
        return None


def proc_cpu(pid: int) -> Optional[tuple]:
    """(user, system) CPU seconds of a process and its direct children (nginx's workers),
    all threads included, from /proc; None if it is gone."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    user = system = 0
    try:
        for p in pids:
            # Fields after the parenthesised command: utime and stime are the 12th and 13th.
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return user / tick, system / tick


# ---------------------------------------------------------------------------------------
# What corelb can do: modes and flags, learned from the binary itself.


def probe(sup: Supervisor, corelb: Path, args: list) -> subprocess.CompletedProcess:
    argv = [str(corelb), "--mode", "nonexistent", "--listen", f"{HOST}:0", *args]
    sup.record(argv)
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, -1, "", "timed out")


def discover_modes(sup: Supervisor, corelb: Path, notes: list) -> list:
    r = probe(sup, corelb, [])
    m = re.search(r'unknown mode "nonexistent"; known: (.+)', r.stderr)
    if r.returncode != 2 or not m:
        notes.append("could not read corelb's modes from `corelb --mode nonexistent` "
                     f"(exit {r.returncode}: {r.stderr.strip()[:200]!r}); using round-robin.")
        return ["round-robin"]
    return [x.strip().strip(".") for x in m.group(1).split(",") if x.strip()]


def flag_supported(sup: Supervisor, corelb: Path, flag: list, notes: list) -> bool:
    r = probe(sup, corelb, flag)
    if "unknown mode" in r.stderr:
        return True
    first = (r.stderr.strip().splitlines() or ["no output"])[0]
    notes.append(f"{rel(corelb, ROOT)} rejects `{shlex.join(flag)}` ({first}): "
                 "runs go without it.")
    return False


@dataclass
class Caps:
    modes: list
    hdr: bool
    csv: bool
    csv_off: bool
    admin_off: bool = False

    def common(self, other: "Caps") -> "Caps":
        """What both binaries accept: an A/B pair runs with the same flags."""
        return Caps(modes=[m for m in self.modes if m in other.modes],
                    hdr=self.hdr and other.hdr, csv=self.csv and other.csv,
                    csv_off=self.csv_off and other.csv_off,
                    admin_off=self.admin_off and other.admin_off)


def probe_caps(sup: Supervisor, corelb: Path, notes: list) -> Caps:
    """corelb's modes and optional flags, learned from the binary itself."""
    caps = Caps(modes=discover_modes(sup, corelb, notes), hdr=False, csv=False, csv_off=False)
    with tempfile.TemporaryDirectory(prefix="corelb-bench-") as tmp:
        caps.hdr = flag_supported(sup, corelb, ["--hdr-dir", tmp], notes)
        caps.csv = flag_supported(sup, corelb, ["--log-csv", str(Path(tmp) / "probe.csv")],
                                  notes)
    caps.csv_off = flag_supported(sup, corelb, ["--log-csv", "off"], notes) if caps.csv \
        else False
    # The admin API listens on 127.0.0.1:5002 by default, outside this bench's port range.
    caps.admin_off = probe(sup, corelb, ["--admin", "off"]).stderr.find("unknown mode") >= 0
    notes.append(f"{rel(corelb, ROOT)}: modes {', '.join(caps.modes)}; "
                 f"--hdr-dir {'on' if caps.hdr else 'unsupported'}, "
                 f"--log-csv {'on' if caps.csv else 'unsupported'}.")
    return caps


# ---------------------------------------------------------------------------------------
# Scenarios and targets.


@dataclass
class Backend:
    id: str
    profile: str
    extra: list = field(default_factory=list)


def fmt_size(n: int) -> str:
    for unit, k in (("MiB", MiB), ("KiB", KiB)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"


@dataclass
class Load:
    """What wrk sends, where a target does not send the scenario's `GET /`: a download
    (`GET /bytes/SIZE`) or an upload (`POST` of SIZE bytes to `/discard`, a short answer)."""
    direction: str  # download | upload
    size: int
    conns: int
    threads: int = 1

    @property
    def path(self) -> str:
        return f"/bytes/{self.size}" if self.direction == "download" else "/discard"

    @property
    def label(self) -> str:
        return f"{self.direction} {fmt_size(self.size)}"


def size_conns(size: int) -> int:
    """wrk connections per body size: enough to keep the proxy busy, few enough for large
    bodies that the run is not mostly data sitting in socket buffers."""
    for at_least, conns in ((16 * MiB, 4), (MiB, 8), (64 * KiB, 16)):
        if size >= at_least:
            return conns
    return 50


@dataclass
class Target:
    name: str
    kind: str  # direct | corelb | nginx | haproxy
    mode: str = "round-robin"  # corelb mode; nginx/haproxy balance
    upstream: str = "persistent"
    workers: Optional[int] = None  # None: the program's default (corelb: one per core)
    csv: bool = True
    load: Optional[Load] = None  # None: the scenario's threads, connections and `GET /`
    bin: Optional[Path] = None  # corelb binary; None: --corelb-bin
    caps: Optional[Caps] = None  # None: those of --corelb-bin


@dataclass
class Scenario:
    key: str
    title: str
    about: str
    backends: list
    threads: int
    conns: int
    reps: int
    targets: list = field(default_factory=list)
    # column label -> function(target name) -> baseline target name or None
    baselines: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    error: str = ""
    report: str = "latency"  # latency (tables, percentile plots) | sizes
    seconds: Optional[int] = None  # per wrk run; None: the run's setting
    nginx_tuning: str = ""  # extra directives in NGINX's proxy location


def corelb_config(backends: list, ports: list) -> str:
    servers = [{"priority": 0, "name": b.id, "address": HOST, "port": p, "load": 1}
               for b, p in zip(backends, ports)]
    return json.dumps({"_note": "written by bench/bench.py", "heartbeatInterval": 2,
                       "heartbeatTimeout": 1, "servers": servers}, indent=2) + "\n"


def one_worker_targets(direct: str = "direct") -> list:
    """direct to the backend, then corelb, NGINX and HAProxy with one worker each and no
    logging: the speed and sizes scenarios."""
    return [Target(direct, "direct"),
            Target("corelb", "corelb", workers=1, csv=False),
            Target("nginx", "nginx", mode="", workers=1),
            Target("haproxy", "haproxy", mode="roundrobin", workers=1)]


# Streaming settings for NGINX in the sizes scenario: bodies of any size, uploads streamed
# rather than spooled to disk, downloads through 64 KiB buffers kept in memory (NGINX stops
# reading the backend while they are full, like corelb and HAProxy do).
NGINX_STREAMING = """client_max_body_size 0;
            client_body_buffer_size 64k;
            proxy_request_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;"""


SCENARIO_KEYS = ["seed", "speed", "queue", "ab", "sizes"]


def build_scenarios(caps: Caps, reps_full: int, quick: bool, only: Optional[set],
                    baseline: Optional[Target] = None,
                    sizes_seconds: Optional[int] = None) -> list:
    """The scenarios to run, in order. `baseline`: a second corelb binary to run right after
    the first in the speed scenario (and alone with it in `ab`, if --only names it)."""
    ncpu = os.cpu_count() or 1
    reps = 1 if quick else reps_full
    out = []
    # The seed's modes first, in corelb's spelling (adaptive_sma may be adaptive-sma), then
    # every other mode corelb lists, so new modes are benchmarked without a change here.
    norm = lambda m: m.lower().replace("_", "-")  # noqa: E731
    known = {norm(m): m for m in caps.modes}
    seed_modes = [known[norm(m)] for m in SEED_MODES if norm(m) in known]
    missing = [m for m in SEED_MODES if norm(m) not in known]
    extra = [m for m in caps.modes if m not in seed_modes]
    modes = seed_modes + extra

    seed = Scenario(
        key="seed", title="Seed: 3 seed-profile backends, both upstream kinds",
        about="backends A, B, C `--profile seed` (A cycles 10-400 ms, B 200 ms, C 250 ms); "
              f"corelb default workers ({ncpu}); `wrk -t4 -c100`",
        backends=[Backend(i, "seed") for i in "ABC"], threads=4, conns=100,
        reps=reps,
        baselines={"vs round-robin (rps / p99)": lambda n: n.split("/")[0] + "/round-robin",
                   "vs HAProxy leastconn (rps / p99)": lambda n: "haproxy leastconn"})
    for up in ("persistent", "per-request"):
        for m in seed_modes if quick else modes:
            seed.targets.append(Target(f"{up}/{m}", "corelb", mode=m, upstream=up))
    # The yardstick for the seed load: least-connections in the big proxies.
    seed.targets += [Target("nginx least_conn", "nginx", mode="least_conn;", workers=ncpu),
                     Target("haproxy leastconn", "haproxy", mode="leastconn", workers=ncpu)]
    if quick and extra:
        seed.notes.append(f"quick run: only the seed's modes here; {', '.join(extra)} run in "
                          "the queue scenario (and here in a full run).")
    if missing:
        seed.notes.append(f"skipped modes corelb does not know yet: {', '.join(missing)}.")
    out.append(seed)

    one_worker = ("corelb `--workers 1` round-robin persistent, NGINX 1 worker (upstream "
                  "keepalive 64), HAProxy `nbthread 1` (`http-reuse always`)")
    raw = Scenario(
        key="speed", title="Raw speed: one fast backend, one worker each",
        about=f"one backend `--profile fast`; {one_worker}; `wrk -t1 -c50`; "
              "targets alternate within each repetition",
        backends=[Backend("F", "fast")], threads=1, conns=50, reps=reps,
        baselines={"vs direct (rps)": lambda n: "direct (ceiling)",
                   "vs NGINX (rps / p99)": lambda n: "nginx",
                   "vs HAProxy (rps / p99)": lambda n: "haproxy"})
    raw.targets = one_worker_targets("direct (ceiling)")
    if caps.csv:
        raw.targets.insert(2, Target("corelb +csv", "corelb", workers=1, csv=True))
    else:
        raw.notes.append("CSV on/off variant skipped: corelb rejects `--log-csv`.")
    if caps.csv and not caps.csv_off:
        raw.notes.append("`--log-csv off` is not accepted: the corelb row runs without "
                         "the flag.")
    if baseline is not None:
        # The A/B pair runs back to back in every repetition, with the same flags.
        raw.targets[1].caps = baseline.caps
        raw.targets.insert(2, baseline)
    out.append(raw)

    queue = Scenario(
        key="queue", title="Queue: unequal capacity, C with periodic 10x slow phases",
        about="A `queue:8:10`, B `queue:4:10`, C `queue:2:10 --slow 10:2000:6000`; "
              f"corelb default workers ({ncpu}) persistent; NGINX `least_conn` "
              f"({ncpu} workers, shared zone); HAProxy `balance leastconn` (nbthread {ncpu}); "
              "`wrk -t4 -c100`",
        backends=[Backend("A", "queue:8:10"), Backend("B", "queue:4:10"),
                  Backend("C", "queue:2:10", ["--slow", "10:2000:6000"])],
        threads=4, conns=100, reps=reps,
        baselines={"vs round-robin (rps / p99)": lambda n: "corelb round-robin",
                   "vs NGINX (rps / p99)": lambda n: "nginx least_conn",
                   "vs HAProxy (rps / p99)": lambda n: "haproxy leastconn"})
    queue.targets = [Target(f"corelb {m}", "corelb", mode=m) for m in modes]
    queue.targets += [Target("nginx least_conn", "nginx", mode="least_conn;", workers=ncpu),
                      Target("haproxy leastconn", "haproxy", mode="leastconn", workers=ncpu)]
    if missing:
        queue.notes.append(f"skipped modes corelb does not know yet: {', '.join(missing)}.")
    out.append(queue)

    if baseline is not None and only and "ab" in only:
        ab = Scenario(
            key="ab", title="A/B: two corelb binaries, CPU per request",
            about=f"as the speed scenario, corelb only: `--corelb-bin` (row `corelb`) and "
                  f"`--baseline-bin` (row `{baseline.name}`) in turn, `--workers 1` "
                  "round-robin persistent, the same flags; one backend `--profile fast`; "
                  "`wrk -t1 -c50`",
            backends=[Backend("F", "fast")], threads=1, conns=50, reps=reps_full,
            baselines={"vs baseline (rps / p99)": lambda n: baseline.name})
        ab.targets = [Target("corelb", "corelb", workers=1, csv=False, caps=baseline.caps),
                      baseline]
        if quick:
            ab.notes.append(f"quick run: still {reps_full} repetitions here (an A/B "
                            "comparison needs them).")
        out.append(ab)

    sizes = Scenario(
        key="sizes", title="Body sizes: downloads and uploads, one worker each",
        about="one backend `--profile fast`; downloads `GET /bytes/N`, uploads `POST` of N "
              "bytes to `/discard` (answer: a short JSON byte count), with a wrk Lua script "
              f"per size (raw/sizes/*.lua); {one_worker}; NGINX streams both ways "
              "(`proxy_request_buffering off`, 8 x 64 KiB `proxy_buffers`, no temp files, "
              "`client_max_body_size 0`); `wrk -t1`, connections by size: "
              + ", ".join(f"{fmt_size(n)} -c{size_conns(n)}"
                          for n in (QUICK_SIZES if quick else SIZES))
              + "; every size and direction runs each target in turn, in every repetition",
        backends=[Backend("F", "fast")], threads=1, conns=0, reps=reps,
        report="sizes", seconds=sizes_seconds, nginx_tuning=NGINX_STREAMING)
    for direction in ("download", "upload"):
        for size in QUICK_SIZES if quick else SIZES:
            load = Load(direction, size, size_conns(size))
            sizes.targets += [dataclasses.replace(t, name=f"{load.label} / {KIND_LABELS[t.kind]}",
                                                  load=load) for t in one_worker_targets()]
    if quick:
        sizes.notes.append("quick run: sizes " + ", ".join(map(fmt_size, QUICK_SIZES))
                           + " only (a full run: " + ", ".join(map(fmt_size, SIZES)) + ").")
    elif os.environ.get("BENCH_SIZES"):
        sizes.notes.append("sizes chosen with BENCH_SIZES: " + ", ".join(map(fmt_size, SIZES))
                           + ".")
    out.append(sizes)

    return [s for s in out if only is None or s.key in only]


# ---------------------------------------------------------------------------------------
# Running.


@dataclass
class Handle:
    port: int
    proc: Optional[subprocess.Popen] = None
    logfile: Optional[Path] = None
    stop_signal: int = signal.SIGTERM


class Bench:
    def __init__(self, out: Path, seconds: int, corelb: Path, caps: Caps, tools: dict,
                 sup: Supervisor):
        self.out = out
        self.raw = out / "raw"
        self.seconds = seconds
        self.corelb = corelb
        self.caps = caps
        self.tools = tools  # tool name -> None if usable, else the reason
        self.sup = sup
        self.runs: list = []
        self.backend_ports: list = []
        self.proxy_port = 0

    # -- backends ------------------------------------------------------------------------

    def start_backends(self, sc: Scenario, ports: list) -> None:
        d = self.raw / sc.key
        for b, port in zip(sc.backends, ports):
            wait_free(port)
            lf = d / f"backend-{b.id}.log"
            p = self.sup.start([BACKEND, "--port", port, "--id", b.id, "--profile", b.profile,
                                *b.extra], lf)
            wait_listening(port, p, lf)
        self.backend_ports = ports[: len(sc.backends)]

    def backends_alive(self) -> None:
        for p in self.sup.procs:
            if str(BACKEND) in p.args and p.poll() is not None:
                raise BenchError(f"backend {shlex.join(p.args)} exited ({p.returncode})")

    # -- targets -------------------------------------------------------------------------

    def launch(self, sc: Scenario, t: Target, run_dir: Path) -> Handle:
        if t.kind == "direct":
            return Handle(self.backend_ports[0])
        port = self.proxy_port
        wait_free(port)
        if t.kind == "corelb":
            cfg = self.raw / sc.key / "corelb.json"
            caps = t.caps or self.caps
            argv = [t.bin or self.corelb, "--mode", t.mode, "--upstream", t.upstream,
                    "--config", cfg, "--listen", f"{HOST}:{port}", "--drain-timeout", "5s"]
            if t.workers:
                argv += ["--workers", t.workers]
            if caps.hdr:
                (run_dir / "hdr").mkdir(parents=True, exist_ok=True)
                argv += ["--hdr-dir", run_dir / "hdr"]
            if t.csv and caps.csv:
                argv += ["--log-csv", run_dir / "requests.csv"]
            elif not t.csv and caps.csv_off:
                argv += ["--log-csv", "off"]
            if caps.admin_off:
                argv += ["--admin", "off"]
            sig = signal.SIGINT  # graceful: corelb writes its HDR dumps on the way out
        elif t.kind == "nginx":
            (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
            servers = "\n".join(f"        server {HOST}:{p};" for p in self.backend_ports)
            conf = Template((BENCH / "nginx.conf.tmpl").read_text()).substitute(
                workers=t.workers or 1, dir=run_dir, port=port, servers=servers,
                balance=t.mode or "# round robin (the default)",
                tuning=sc.nginx_tuning or "# no extra settings")
            (run_dir / "nginx.conf").write_text(conf)
            argv = ["nginx", "-c", run_dir / "nginx.conf", "-e", run_dir / "error.log"]
            sig = signal.SIGTERM
        elif t.kind == "haproxy":
            servers = "\n".join(f"    server {b.id} {HOST}:{p}"
                                for b, p in zip(sc.backends, self.backend_ports))
            cfg = Template((BENCH / "haproxy.cfg.tmpl").read_text()).substitute(
                threads=t.workers or 1, dir=run_dir, port=port, servers=servers,
                balance=t.mode)
            (run_dir / "haproxy.cfg").write_text(cfg)
            argv = ["haproxy", "-db", "-f", run_dir / "haproxy.cfg"]
            sig = signal.SIGTERM
        else:
            raise BenchError(f"unknown target kind {t.kind}")
        lf = run_dir / f"{t.kind}.log"
        p = self.sup.start(argv, lf)
        h = Handle(port, p, lf, sig)
        try:
            wait_listening(port, p, lf)
        except BenchError:
            self.sup.stop(p)
            raise
        return h

    # -- one run ---------------------------------------------------------------------------

    def run_one(self, sc: Scenario, t: Target, rep: int) -> dict:
        run_dir = self.raw / sc.key / f"{slug(t.name)}-r{rep + 1}"
        run_dir.mkdir(parents=True, exist_ok=True)
        res = {"scenario": sc.key, "target": t.name, "rep": rep + 1, "ok": False,
               "error": "", "notes": [], "dir": rel(run_dir, self.out)}
        if t.load is not None:
            res["load"] = asdict(t.load)
        h = None
        t0 = time.monotonic()
        try:
            self.backends_alive()
            unavailable = self.tools.get(t.kind)
            if unavailable:
                raise BenchError(unavailable)
            h = self.launch(sc, t, run_dir)
            before = [backend_requests(p) for p in self.backend_ports]
            cpu0 = proc_cpu(h.proc.pid) if h.proc is not None else None
            res.update(self.wrk(sc, t, h.port, run_dir / "wrk.txt"))
            cpu1 = proc_cpu(h.proc.pid) if h.proc is not None else None
            after = [backend_requests(p) for p in self.backend_ports]
            if cpu0 and cpu1 and res.get("requests"):
                # The proxy's own CPU per request while wrk ran (clock ticks: +-10 ms).
                n = res["requests"]
                res["cpu_us"] = {"user": (cpu1[0] - cpu0[0]) / n * 1e6,
                                 "system": (cpu1[1] - cpu0[1]) / n * 1e6}
            if len(self.backend_ports) > 1 and None not in before + after:
                res["backend_requests"] = {b.id: a - b0 for b, a, b0
                                           in zip(sc.backends, after, before)}
            res["ok"] = True
        except BenchError as e:
            res["error"] = str(e)
        except Exception as e:  # a harness bug fails this run, not the bench
            res["error"] = f"{type(e).__name__}: {e}"
        finally:
            if h is not None and h.proc is not None:
                rc = self.sup.stop(h.proc, h.stop_signal, 10.0)
                # nginx and haproxy die by the signal; corelb must drain and exit 0.
                if rc != 0 and not (t.kind != "corelb" and rc == -h.stop_signal):
                    res["notes"].append(f"{t.kind} exit code {rc} after stop: {tail(h.logfile)}")
        if t.kind == "corelb":
            self.collect_corelb(t, run_dir, res)
        res["wall_s"] = round(time.monotonic() - t0, 2)
        self.runs.append(res)
        return res

    def collect_corelb(self, t: Target, run_dir: Path, res: dict) -> None:
        hgrms = sorted((run_dir / "hdr").rglob("*.hgrm")) if (run_dir / "hdr").exists() else []
        res["hgrm"] = [rel(p, self.out) for p in hgrms]
        res["hlog"] = [rel(p, self.out) for p in sorted(run_dir.rglob("*.hlog"))]
        if (t.caps or self.caps).hdr and res["ok"] and not hgrms:
            res["notes"].append("corelb wrote no .hgrm dump")
        m = re.search(r"(\d+) records written, (\d+) dropped", tail(run_dir / "corelb.log", 20))
        if m:
            res["csv_written"], res["csv_dropped"] = int(m.group(1)), int(m.group(2))
        csv = run_dir / "requests.csv"
        if csv.exists():
            with open(csv, "rb") as f:
                res["csv_rows"] = sum(chunk.count(b"\n") for chunk in iter(
                    lambda: f.read(1 << 20), b""))

    def upload_script(self, sc: Scenario, load: Load) -> Path:
        """A wrk script that POSTs `load.size` bytes, with report.lua's done() hook (wrk
        takes one script); written once per scenario, next to the runs."""
        path = self.raw / sc.key / f"{slug(load.label)}.lua"
        if not path.exists():
            path.write_text(
                f"-- Written by bench/bench.py: POST {load.size} bytes to {load.path}, then\n"
                "-- bench/report.lua (below). wrk formats the request once per thread.\n"
                'wrk.method = "POST"\n'
                f'wrk.body = string.rep("x", {load.size})\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n\n'
                + REPORT_LUA.read_text())
        return path

    def wrk(self, sc: Scenario, t: Target, port: int, outfile: Path) -> dict:
        load = t.load
        threads, conns = (load.threads, load.conns) if load else (sc.threads, sc.conns)
        script = self.upload_script(sc, load) if load and load.direction == "upload" \
            else REPORT_LUA
        seconds = sc.seconds or self.seconds
        argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", WRK_TIMEOUT,
                "-s", script, f"http://{HOST}:{port}{load.path if load else '/'}"]
        p = self.sup.start(argv, outfile)
        try:
            p.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            raise BenchError("wrk did not finish in time")
        finally:
            self.sup.stop(p)
        text = outfile.read_text(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if line is None:
            raise BenchError(f"wrk printed no BENCH_JSON line: {tail(outfile)}")
        j = json.loads(line[len("BENCH_JSON "):])
        lat = j["latency_us"]
        pct = {p: v for p, v in lat["percentiles"]}
        errs = {k: int(v or 0) for k, v in j["errors"].items()}
        secs = (j["duration_us"] or 0) / 1e6
        ms = lambda us: None if us is None else us / 1000.0  # noqa: E731
        return {
            "cmd": shlex.join(str(a) for a in argv),
            "wrk_out": rel(outfile, self.out),
            "requests": int(j["requests"] or 0),
            "bytes_read": int(j["bytes"] or 0),
            "seconds": secs,
            "rps": (j["requests"] or 0) / secs if secs else 0.0,
            "errors": errs,
            "errors_total": sum(errs.values()),
            # Little's law for a closed loop (every connection always has one request
            # out): the true mean latency. wrk's own mean is not: wrk 4 back-fills its
            # histogram for coordinated omission (stats_correct) before printing or calling
            # done(), which inflates the mean of a spread-out distribution.
            "little_ms": (conns * secs / j["requests"] * 1000.0) if j["requests"] else None,
            "latency_ms": {"mean": ms(lat["mean"]), "p50": ms(pct.get(50)),
                           "p90": ms(pct.get(90)), "p99": ms(pct.get(99)),
                           "p99.9": ms(pct.get(99.9)), "max": ms(lat["max"])},
            "wrk_percentiles_ms": [[p, ms(v)] for p, v in lat["percentiles"] if v is not None],
        }

    # -- a scenario ---------------------------------------------------------------------

    def run_scenario(self, sc: Scenario, ports: list, progress: Callable) -> None:
        d = self.raw / sc.key
        d.mkdir(parents=True, exist_ok=True)
        log(f"scenario {sc.key}: {sc.title}")
        if any(t.kind == "corelb" for t in sc.targets):
            (d / "corelb.json").write_text(corelb_config(sc.backends, ports))
        try:
            self.start_backends(sc, ports)
        except BenchError as e:
            sc.error = f"backends did not start: {e}"
            log(sc.error)
            self.stop_backends()
            return
        try:
            for rep in range(sc.reps):
                for t in sc.targets:  # alternating: A, B, C, A, B, C, ...
                    r = self.run_one(sc, t, rep)
                    progress(sc, t, rep, r)
                    time.sleep(PAUSE_BETWEEN_RUNS)
        finally:
            self.stop_backends()

    def stop_backends(self) -> None:
        for p in list(self.sup.procs):
            if str(BACKEND) in p.args:
                self.sup.stop(p)


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")


def rel(p: Path, base: Path) -> str:
    try:
        return str(Path(p).relative_to(base))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------------------------
# Machine, summary, plots.


def sh(argv: list) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def binary_info(path: Path) -> str:
    """`--version`, path and the start of the sha256 of a corelb binary."""
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        digest = "unreadable"
    version = sh([str(path), "--version"]).splitlines()
    return f"{version[0] if version else 'no --version'} ({rel(path, ROOT)}, sha256 {digest})"


def machine_info(corelb: Path, baseline: Optional[Path]) -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("model name", "Model", "Hardware") and v.strip():
                cpu = v.strip()
                break
    except OSError:
        pass
    commit = sh(["git", "rev-parse", "--short=12", "HEAD"]) or "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src", "backend",
                            "Cargo.toml", "Cargo.lock"], cwd=ROOT,
                           capture_output=True).returncode == 1
    first = lambda s: s.splitlines()[0] if s else "missing"  # noqa: E731
    return {
        "host": socket.gethostname(),
        "nproc": sh(["nproc"]) or str(os.cpu_count()),
        "cpu": cpu or "unknown",
        "kernel": sh(["uname", "-r"]),
        "commit": commit + ("-dirty (uncommitted changes in src/ or backend/)" if dirty else ""),
        "corelb": binary_info(corelb),
        **({"baseline": binary_info(baseline)} if baseline else {}),
        "wrk": first(sh(["wrk", "--version"])) if shutil.which("wrk") else "missing",
        "nginx": first(sh(["nginx", "-v"])) if shutil.which("nginx") else "missing",
        "haproxy": first(sh(["haproxy", "-v"])) if shutil.which("haproxy") else "missing",
        "python": sys.version.split()[0],
        "loadavg_start": "%.2f %.2f %.2f" % os.getloadavg(),
    }


def cpu_total(r: dict) -> Optional[float]:
    """A run's proxy CPU per request, user plus system, in microseconds."""
    c = r.get("cpu_us")
    return c["user"] + c["system"] if c else None


def median_of(runs: list, get: Callable) -> Optional[float]:
    vals = [v for v in (get(r) for r in runs) if v is not None]
    return statistics.median(vals) if vals else None


def aggregate(runs: list) -> dict:
    ok = [r for r in runs if r["ok"]]
    a = {"n": len(runs), "ok": len(ok), "errors": [r["error"] for r in runs if not r["ok"]]}
    if not ok:
        return a
    a["rps"] = median_of(ok, lambda r: r["rps"])
    a["rps_min"] = min(r["rps"] for r in ok)
    a["rps_max"] = max(r["rps"] for r in ok)
    for k in ("mean", "p50", "p90", "p99", "p99.9", "max"):
        a[k] = median_of(ok, lambda r, k=k: r["latency_ms"][k])
    a["little"] = median_of(ok, lambda r: r.get("little_ms"))
    for k in ("user", "system"):
        a["cpu_" + k] = median_of(ok, lambda r, k=k: r.get("cpu_us", {}).get(k))
    a["cpu_total"] = median_of(ok, cpu_total)
    a["err"] = {k: median_of(ok, lambda r, k=k: r["errors"][k]) for k in ok[0]["errors"]}
    a["requests"] = median_of(ok, lambda r: r["requests"])
    shares = [r["backend_requests"] for r in ok if r.get("backend_requests")]
    if shares:
        ids = list(shares[0])
        a["share"] = {i: statistics.median(100.0 * s[i] / max(1, sum(s.values()))
                                           for s in shares) for i in ids}
    # The run with the median throughput stands for the target in the plots.
    a["rep_run"] = sorted(ok, key=lambda r: r["rps"])[(len(ok) - 1) // 2]
    return a


def fmt_ms(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_errors(a: dict) -> str:
    err = a.get("err") or {}
    total = sum(v for v in err.values() if v)
    if not total:
        return "0"
    parts = [f"{k} {v:.0f}" for k, v in err.items() if v]
    pct = 100.0 * total / max(1.0, (a.get("requests") or 0) + total)
    return f"{total:.0f} ({', '.join(parts)}; {pct:.2g}%)"


def ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.2f}"


def table_row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table_head(cols: list) -> list:
    return [table_row(cols), "|" + "|".join("---" for _ in cols) + "|"]


def latency_table(sc: Scenario, aggs: dict) -> list:
    """rps, latencies, errors, traffic shares and ratios to baselines: one row a target."""
    L = []
    has_share = any("share" in a for a in aggs.values())
    cols = ["target", "rps", "mean", "wrk mean", "p50", "p90", "p99", "p99.9", "max",
            "errors"]
    if has_share:
        cols.append("traffic share " + "/".join(b.id for b in sc.backends) + " %")
    cols += list(sc.baselines)
    L += table_head(cols)
    for t in sc.targets:
        a = aggs[t.name]
        if not a.get("ok"):
            why = "; ".join(sorted(set(a["errors"]))) or "not run"
            L.append(table_row([t.name, f"failed: {why[:300]}"] + [""] * (len(cols) - 2)))
            continue
        rps = f"{a['rps']:.0f}"
        if a["ok"] > 1:
            rps += f" ({a['rps_min']:.0f}-{a['rps_max']:.0f})"
        if a["ok"] < a["n"]:
            rps += f" [{a['ok']}/{a['n']} ok]"
        row = [t.name, rps] + [fmt_ms(a[k]) for k in
                               ("little", "mean", "p50", "p90", "p99", "p99.9", "max")]
        row.append(fmt_errors(a))
        if has_share:
            row.append("/".join(f"{v:.0f}" for v in a["share"].values())
                       if "share" in a else "-")
        for label, base_of in sc.baselines.items():
            base = base_of(t.name)
            b = aggs.get(base) if base else None
            if base == t.name or not b or not b.get("ok"):
                row.append("-")
            elif "p99" in label:
                row.append(f"{ratio(a['rps'], b['rps'])} / {ratio(a['p99'], b['p99'])}")
            else:
                row.append(ratio(a["rps"], b["rps"]))
        L.append(table_row(row))
    L.append("")
    return L


def cpu_table(sc: Scenario, aggs: dict) -> list:
    """The proxy's user, system and total CPU per request, medians: one row a proxy."""
    cpu = [(t.name, aggs[t.name]) for t in sc.targets
           if aggs[t.name].get("cpu_user") is not None]
    if not cpu:
        return []
    L = ["The proxy's own CPU per request while wrk ran (from /proc; microseconds, medians; "
         "user is the proxy's code, system the kernel's TCP work for its syscalls and the "
         "wakeups they cause):", ""]
    L += table_head(["target", "user", "system", "total"])
    for name, a in cpu:
        L.append(table_row([name, f"{a['cpu_user']:.2f}", f"{a['cpu_system']:.2f}",
                            f"{a['cpu_total']:.2f}"]))
    return L + [""]


AB_LIMIT = 1.03  # the A/B table says whether corelb stays within 3% of the baseline's CPU


def ab_table(sc: Scenario, runs: list) -> list:
    """corelb (--corelb-bin) against its baseline (--baseline-bin): CPU per request of each
    run, paired by repetition (they ran back to back), and the ratios."""
    base = next((t for t in sc.targets if t.bin is not None), None)
    if base is None:
        return []
    by = {(r["target"], r["rep"]): r for r in runs
          if r["scenario"] == sc.key and r["ok"] and r.get("cpu_us")}
    L = [f"A/B: `corelb` is `--corelb-bin`, `{base.name}` is `--baseline-bin` "
         f"({rel(base.bin, ROOT)}); CPU per request (user + system, µs) of each repetition, "
         "the two runs back to back:", ""]
    L += table_head(["repetition", "corelb µs/req", f"{base.name} µs/req", "ratio",
                     "corelb rps", f"{base.name} rps"])
    ratios, a_cpu, b_cpu = [], [], []
    for rep in range(1, sc.reps + 1):
        a, b = by.get(("corelb", rep)), by.get((base.name, rep))
        if not a or not b:
            L.append(table_row([rep, "failed" if not a else f"{cpu_total(a):.3f}",
                                "failed" if not b else f"{cpu_total(b):.3f}", "-", "-", "-"]))
            continue
        a_cpu.append(cpu_total(a))
        b_cpu.append(cpu_total(b))
        ratios.append(a_cpu[-1] / b_cpu[-1])
        L.append(table_row([rep, f"{a_cpu[-1]:.3f}", f"{b_cpu[-1]:.3f}",
                            f"{ratios[-1]:.4f}", f"{a['rps']:.0f}", f"{b['rps']:.0f}"]))
    if not ratios:
        return L + ["", "No repetition has both runs: no ratio.", ""]
    med = statistics.median(ratios)
    L.append(table_row(["**median**", f"{statistics.median(a_cpu):.3f}",
                        f"{statistics.median(b_cpu):.3f}", f"**{med:.4f}**", "", ""]))
    L += ["", f"Median of the per-repetition ratios: **{med:.4f}** ({100 * (med - 1):+.1f}% CPU "
          f"per request against the baseline; {min(ratios):.4f}-{max(ratios):.4f} over "
          f"{len(ratios)} repetitions); ratio of the medians "
          f"{statistics.median(a_cpu) / statistics.median(b_cpu):.4f}. "
          + (f"Within {100 * (AB_LIMIT - 1):.0f}%: "
             + ("yes." if med <= AB_LIMIT else "**no**."))
          + (" The ratios spread over more than that margin: take more repetitions "
             "(`--reps`) or longer runs on a quieter machine before trusting the verdict."
             if max(ratios) - min(ratios) > AB_LIMIT - 1 else "")
          + " CPU per request falls as load rises (more requests per wakeup), so compare "
          "rps too: a slower binary at lower rps can look cheaper per request.", ""]
    return L


def sizes_tables(sc: Scenario, aggs: dict) -> list:
    """Per direction, size and target: throughput, p99, CPU per request and per MiB, and the
    ratios to NGINX and HAProxy for the same size."""
    L = ["rps and MiB/s are medians (MiB/s counts body bytes: rps x size); p99 is wrk's "
         "(ms); CPU is the proxy's user + system time over the run divided by its requests "
         "(µs per request) and by its body bytes (ms per MiB), from /proc, medians. Ratios: "
         "this row's throughput / CPU per request over NGINX's and HAProxy's for the same "
         "size (below 1 is less throughput / less CPU).", ""]
    cols = ["size", "conns", "target", "rps", "MiB/s", "p99 ms", "CPU µs/req", "CPU ms/MiB",
            "vs NGINX (thr / CPU)", "vs HAProxy (thr / CPU)", "errors"]
    loads = list(dict.fromkeys((t.load.direction, t.load.size) for t in sc.targets))
    for direction in dict.fromkeys(d for d, _ in loads):
        L += [f"### {direction.capitalize()}s", ""] + table_head(cols)
        for _, size in [x for x in loads if x[0] == direction]:
            ts = [t for t in sc.targets
                  if (t.load.direction, t.load.size) == (direction, size)]
            ref = {t.kind: aggs[t.name] for t in ts}
            for t in ts:
                a = aggs[t.name]
                head = [fmt_size(size), t.load.conns, KIND_LABELS[t.kind]]
                if not a.get("ok"):
                    why = "; ".join(sorted(set(a["errors"]))) or "not run"
                    L.append(table_row(head + [f"failed: {why[:200]}"] + [""] * 7))
                    continue
                cpu = a.get("cpu_total")
                row = head + [f"{a['rps']:.0f}", f"{a['rps'] * size / MiB:.1f}" if size else "-",
                              fmt_ms(a["p99"]), "-" if cpu is None else f"{cpu:.1f}",
                              "-" if cpu is None or not size else
                              f"{cpu / (size / MiB) / 1000:.3f}"]
                for kind in ("nginx", "haproxy"):
                    b = ref.get(kind)
                    if t.kind == kind or not b or not b.get("ok"):
                        row.append("-")
                    else:
                        row.append(f"{ratio(a['rps'], b['rps'])} / "
                                   f"{ratio(cpu, b.get('cpu_total'))}")
                row.append(fmt_errors(a))
                L.append(table_row(row))
        L.append("")
    return L


def write_summary(out: Path, info: dict, settings: dict, scenarios: list, runs: list,
                  notes: list, plots: dict, commands: list, interrupted: bool) -> None:
    L = []
    L.append(f"# corelb benchmark: {settings['date']} on {info['host']}"
             + (" (quick)" if settings["quick"] else ""))
    L.append("")
    if interrupted:
        L.append("**Interrupted: the tables hold only the runs that finished.**")
        L.append("")
    L.append("| machine | |")
    L.append("|---|---|")
    for k, label in (("nproc", "cores (`nproc`)"), ("cpu", "CPU"), ("kernel", "kernel"),
                     ("commit", "corelb commit"), ("corelb", "corelb"),
                     ("baseline", "baseline corelb (A/B)"), ("wrk", "wrk"),
                     ("nginx", "nginx"), ("haproxy", "haproxy"),
                     ("loadavg_start", "load average at start"),
                     ("loadavg_end", "load average at end")):
        if k in info or k == "loadavg_end":
            L.append(f"| {label} | {info.get(k, '')} |")
    L.append("")
    L.append(f"Each wrk run lasts {settings['seconds']} s (`BENCH_SECONDS`)"
             + "".join(f" ({s.key}: {s.seconds} s)" for s in scenarios
                       if s.seconds and s.seconds != settings["seconds"])
             + f", `--timeout {WRK_TIMEOUT}`; repetitions: "
             + ", ".join(f"{s.key} {s.reps}" for s in scenarios)
             + f"; total time {settings.get('elapsed', 0):.0f} s. "
             "Numbers are medians over the repetitions, column by column. `mean` is the "
             "true mean latency by Little's law (connections x seconds / requests: each "
             "connection always has one request out). The other latencies are wrk's "
             "(client side, ms) from bench/report.lua's `done()` hook; wrk 4 back-fills "
             "them for coordinated omission before reporting (`stats_correct`), which adds "
             "synthetic samples below every response slower than connections/rps, so "
             "`wrk mean` and the percentiles of spread-out distributions read high (seed "
             "server A alone: true mean 143 ms, wrk mean 165 ms). Errors are "
             "wrk's connect/read/write/timeout errors plus `status` (HTTP status >= 400). "
             "Ratios divide this row's rps (and p99) by the baseline's, measured in the "
             "same run. Loopback only; wrk, the proxy and the backends share the cores.")
    L.append("")
    for sc in scenarios:
        L.append(f"## {sc.title}")
        L.append("")
        L.append(sc.about + ".")
        L.append("")
        if sc.error:
            L.append(f"**Scenario failed:** {sc.error}")
            L.append("")
        aggs = {t.name: aggregate([r for r in runs if r["scenario"] == sc.key
                                   and r["target"] == t.name]) for t in sc.targets}
        if sc.report == "sizes":
            L += sizes_tables(sc, aggs)
        else:
            L += latency_table(sc, aggs)
        if sc.key in ("speed", "ab"):
            L += cpu_table(sc, aggs) + ab_table(sc, runs)
        csv_rows = [r["csv_rows"] for r in runs if r["scenario"] == sc.key and "csv_rows" in r]
        if csv_rows:
            span = f"{min(csv_rows)}" + (f"-{max(csv_rows)}" if max(csv_rows) != min(csv_rows)
                                         else "")
            dropped = [r["csv_dropped"] for r in runs
                       if r["scenario"] == sc.key and "csv_dropped" in r]
            L.append(f"corelb's `--log-csv` files held {span} lines per run (in raw/)"
                     + (f"; corelb reported up to {max(dropped)} records dropped per run "
                        "(log queue full)." if dropped and max(dropped) else "."))
            L.append("")
        for n in sc.notes:
            L.append(f"- {n}")
        run_notes = sorted({f"{r['target']} r{r['rep']}: {n}" for r in runs
                            if r["scenario"] == sc.key for n in r["notes"]})
        for n in run_notes:
            L.append(f"- {n}")
        if sc.notes or run_notes:
            L.append("")
        if sc.key in plots and sc.report == "sizes":
            L.append(f"![throughput and CPU per MiB by body size]({plots[sc.key]})")
            L.append("")
            L.append("Body throughput (MiB/s) and the proxy's CPU per MiB moved, by body size "
                     "(log axes; sizes above 0): medians, downloads above, uploads below. "
                     "`direct` has no proxy, so no CPU line.")
            L.append("")
        elif sc.key in plots:
            units = sorted({r["hgrm_unit"] for r in runs
                            if r["scenario"] == sc.key and r.get("hgrm_unit")})
            L.append(f"![latency by percentile, {sc.key}]({plots[sc.key]})")
            L.append("")
            L.append("Solid lines: corelb's own `--hdr-dir` dump (`*_total.hgrm`; time inside "
                     "the proxy, including requests still in flight when wrk stopped"
                     + (f"; values read as {', '.join(units)}" if units else "")
                     + "). Dashed: wrk's client-side percentiles, for every target.")
            L.append("")
    if "throughput" in plots:
        L.append("## Throughput by target")
        L.append("")
        L.append(f"![throughput]({plots['throughput']})")
        L.append("")
    L.append("## Notes")
    L.append("")
    for n in notes or ["none"]:
        L.append(f"- {n}")
    L.append("")
    L.append("## Commands")
    L.append("")
    L.append(f"Run from the repository root as `{settings['invocation']}`; "
             "every command below ran in this order (full list in commands.txt).")
    L.append("")
    L.append("<details><summary>commands</summary>")
    L.append("")
    L.append("```")
    L.extend(commands)
    L.append("```")
    L.append("")
    L.append("</details>")
    L.append("")
    (out / "summary.md").write_text("\n".join(L))
    (out / "commands.txt").write_text("\n".join(commands) + "\n")
    (out / "results.json").write_text(json.dumps(
        {"machine": info, "settings": settings, "notes": notes, "runs": runs,
         "scenarios": [{"key": s.key, "title": s.title, "about": s.about, "reps": s.reps,
                        "seconds": s.seconds, "report": s.report,
                        "error": s.error, "notes": s.notes,
                        "targets": [t.name for t in s.targets],
                        "target_meta": [{"name": t.name, "kind": t.kind,
                                         "load": asdict(t.load) if t.load else None,
                                         "bin": str(t.bin) if t.bin else None}
                                        for t in s.targets]} for s in scenarios]},
        indent=1, default=str) + "\n")


# HDR percentile-distribution dumps: "Value Percentile TotalCount 1/(1-Percentile)".

UNIT_TO_US = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}


def read_hgrm(path: Path) -> tuple:
    """Returns ([(percentile fraction, value)], total count)."""
    pts, total = [], 0
    for line in path.read_text(errors="replace").splitlines():
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("Value"):
            m = re.search(r"Total count\s*=\s*(\d+)", s)
            if m:
                total = int(m.group(1))
            continue
        parts = s.split()
        try:
            v, p, c = float(parts[0]), float(parts[1]), float(parts[2])
        except (ValueError, IndexError):
            continue
        pts.append((p, v))
        total = max(total, int(c))
    if pts and max(p for p, _ in pts) > 1.0001:  # written in percent, not as a fraction
        pts = [(p / 100.0, v) for p, v in pts]
    return pts, total


def hgrm_unit(path: Path, pts: list, wrk_p50_ms: Optional[float]) -> tuple:
    """The dump's unit as microseconds per value, and how it was found."""
    # corelb writes its .hgrm percentile distributions in milliseconds (README).
    if path.name.endswith("_total.hgrm") or "_backend-" in path.name:
        return UNIT_TO_US["ms"], "ms (corelb's dumps)"
    text = (path.name + " " + " ".join(
        ln for ln in path.read_text(errors="replace").splitlines()[:5]
        if ln.startswith("#"))).lower()
    for unit, words in (("ns", ("_ns", "nanos")), ("us", ("_us", "micros", "µs")),
                        ("ms", ("_ms", "millis")), ("s", ("_s.", "seconds"))):
        if any(w in text for w in words):
            return UNIT_TO_US[unit], f"{unit} (named)"
    p50 = next((v for p, v in pts if p >= 0.5), None)
    if not p50 or not wrk_p50_ms:
        return 1.0, "us (assumed)"
    # The proxy's own latency is a little below the client's: take the nearest unit.
    unit = min(UNIT_TO_US, key=lambda u: abs(math.log(p50 * UNIT_TO_US[u] / (wrk_p50_ms * 1e3))))
    return UNIT_TO_US[unit], f"{unit} (nearest to wrk's p50)"


def pick_hgrm(paths: list) -> Optional[Path]:
    """A dump of all requests: one named total/all/proxy, else the one with most counts."""
    if not paths:
        return None
    named = [p for p in paths if re.search(r"total|all|proxy|overall|request", p.name, re.I)]
    pool = named or paths
    return max(pool, key=lambda p: read_hgrm(p)[1])


def make_plots(out: Path, scenarios: list, runs: list, notes: list) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    plots = {}
    for sc in scenarios:
        if sc.report == "sizes":
            name = sizes_plot(plt, out, sc, runs)
            if name:
                plots[sc.key] = name
            continue
        # Per target: corelb's own HDR dump (solid) where there is one, wrk's view (dashed).
        curves = []
        for t in sc.targets:
            a = aggregate([r for r in runs if r["scenario"] == sc.key and r["target"] == t.name])
            if not a.get("ok"):
                continue
            r = a["rep_run"]
            hdr = None
            path = pick_hgrm([out / p for p in r.get("hgrm", [])])
            if path is not None:
                raw_pts = [(p, v) for p, v in read_hgrm(path)[0] if p < 1.0]
                if raw_pts:
                    per_us, how = hgrm_unit(path, raw_pts, r["latency_ms"]["p50"])
                    hdr = [(p, v * per_us / 1e3) for p, v in raw_pts]
                    r["hgrm_plotted"] = rel(path, out)
                    r["hgrm_unit"] = how
            wrk = [(p / 100.0, v) for p, v in r["wrk_percentiles_ms"] if p < 100]
            curves.append((t.name, hdr, wrk))
        if not curves:
            continue
        vmax = max(v for _, hdr, wrk in curves for _, v in (hdr or []) + wrk)
        scale, unit = (1e3, "µs") if vmax < 2 else (1.0, "ms")
        fig, ax = plt.subplots(figsize=(12.5, 5.5))
        cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (name, hdr, wrk) in enumerate(curves):
            color = cycle[i % len(cycle)]
            if hdr:
                ax.plot([1.0 / (1.0 - p) for p, _ in hdr], [v * scale for _, v in hdr], "-",
                        color=color, linewidth=1.8, label=f"{name} (corelb HDR)")
            ax.plot([1.0 / (1.0 - p) for p, _ in wrk], [v * scale for _, v in wrk], "--",
                    color=color, linewidth=1.2, marker="o", markersize=3,
                    label=f"{name} (wrk)")
        ax.set_xscale("log")
        ticks = [1, 2, 10, 100, 1000, 10000, 100000]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda x, _: f"{100 * (1 - 1 / x):.10g}%"))
        ax.set_xlim(1, 100000)
        # Tails span orders of magnitude (the queue scenario: 50 ms to seconds).
        ax.set_yscale("log")
        ax.set_xlabel("percentile")
        ax.set_ylabel(f"latency ({unit})")
        ax.set_title(f"{sc.title}\nlatency by percentile, median-rps run of each target: "
                     "solid = corelb's HDR dump, dashed = wrk (client side)", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        name = f"latency-{sc.key}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        plots[sc.key] = name

    bars = []
    for sc in scenarios:
        if sc.report == "sizes":  # 40 bars of unlike loads: its own plot says it better
            continue
        rows = []
        for t in sc.targets:
            a = aggregate([r for r in runs if r["scenario"] == sc.key and r["target"] == t.name])
            if a.get("ok"):
                rows.append((t.name, a["rps"], a["rps_min"], a["rps_max"], t.kind))
        if rows:
            bars.append((sc, rows))
    if bars:
        heights = [max(1.6, 0.42 * len(rows) + 1.0) for _, rows in bars]
        fig, axes = plt.subplots(len(bars), 1, figsize=(10, sum(heights)),
                                 gridspec_kw={"height_ratios": heights}, squeeze=False)
        for ax, (sc, rows) in zip(axes[:, 0], bars):
            names = [r[0] for r in rows][::-1]
            vals = [r[1] for r in rows][::-1]
            lo = [r[1] - r[2] for r in rows][::-1]
            hi = [r[3] - r[1] for r in rows][::-1]
            ax.barh(names, vals, xerr=[lo, hi], capsize=3,
                    color=[KIND_COLORS.get(r[4], "#555") for r in rows][::-1])
            for y, v in enumerate(vals):
                ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
            ax.set_title(f"{sc.title} (requests/s, median; whiskers min-max)", fontsize=10)
            ax.set_xlim(0, max(vals) * 1.18)
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=110)
        plt.close(fig)
        plots["throughput"] = "throughput.png"
    return plots


def sizes_plot(plt, out: Path, sc: Scenario, runs: list) -> Optional[str]:
    """MiB/s and CPU ms per MiB against body size (log-log), downloads and uploads."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    series = {}  # (direction, kind) -> [(size, MiB/s, CPU ms per MiB or None)]
    for t in sc.targets:
        if not t.load.size:
            continue
        a = aggregate([r for r in runs if r["scenario"] == sc.key and r["target"] == t.name])
        if not a.get("ok"):
            continue
        mib = t.load.size / MiB
        cpu = a.get("cpu_total")
        series.setdefault((t.load.direction, t.kind), []).append(
            (t.load.size, a["rps"] * mib, None if cpu is None else cpu / mib / 1000))
    if not series:
        return None
    directions = list(dict.fromkeys(d for d, _ in series))
    fig, axes = plt.subplots(len(directions), 2, figsize=(12, 4.2 * len(directions)),
                             squeeze=False)
    sizes = sorted({x for pts in series.values() for x, _, _ in pts})
    for row, direction in zip(axes, directions):
        for (d, kind), pts in series.items():
            if d != direction:
                continue
            style = dict(color=KIND_COLORS.get(kind), marker="o", label=KIND_LABELS[kind])
            row[0].plot([x for x, _, _ in pts], [y for _, y, _ in pts], **style)
            cpu = [(x, c) for x, _, c in pts if c is not None]
            if cpu:
                row[1].plot([x for x, _ in cpu], [c for _, c in cpu], **style)
        for ax, what in zip(row, ("body throughput (MiB/s)", "proxy CPU per MiB (ms)")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(sizes))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: fmt_size(int(x))))
            ax.set_xlabel("body size")
            ax.set_ylabel(what)
            ax.set_title(f"{direction}s: {what}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"{sc.title} (medians)", fontsize=11)
    fig.tight_layout()
    name = f"{sc.key}.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


# ---------------------------------------------------------------------------------------


def replot(out: Path) -> int:
    """Redraws the PNG plots of an earlier run; results.json and raw/ stay as they are."""
    notes: list = []
    if not ensure_matplotlib(notes):
        log("matplotlib unavailable: " + "; ".join(notes))
        return 1
    d = json.loads((out / "results.json").read_text())
    scenarios = []
    for s in d["scenarios"]:
        sc = Scenario(key=s["key"], title=s["title"], about=s["about"], backends=[],
                      threads=0, conns=0, reps=s["reps"], report=s.get("report", "latency"))
        for m in s.get("target_meta") or [{"name": n} for n in s["targets"]]:
            name = m["name"]
            # Runs before target_meta existed: the kind is the name's start.
            kind = m.get("kind") or next((k for k in ("direct", "nginx", "haproxy")
                                          if name.startswith(k)), "corelb")
            sc.targets.append(Target(name, kind, load=Load(**m["load"]) if m.get("load")
                                     else None))
        scenarios.append(sc)
    make_plots(out, scenarios, d["runs"], notes)
    log(f"replotted {out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"1 repetition per target, {QUICK_SECONDS} s runs unless BENCH_SECONDS")
    ap.add_argument("--seconds", type=int, help="seconds per wrk run (default: BENCH_SECONDS, "
                    f"else {FULL_SECONDS}, or {QUICK_SECONDS} with --quick)")
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", 3)),
                    help="repetitions in a full run (BENCH_REPS, default 3)")
    ap.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIO_KEYS)
                    + " (ab only when named here)")
    ap.add_argument("--corelb-bin", type=Path, default=CORELB,
                    help=f"the corelb binary to benchmark (default {rel(CORELB, ROOT)})")
    ap.add_argument("--baseline-bin", type=Path,
                    help="a second corelb binary (say, before a refactor): runs right after "
                    "--corelb-bin in every repetition of the speed scenario (and alone with it "
                    "in `--only ab`), reporting both CPU per request and the ratio")
    ap.add_argument("--out", help="results directory (default bench/results/<date>-<host>"
                    "[-quick][-<only>])")
    ap.add_argument("--replot", metavar="DIR",
                    help="redraw the plots of an earlier run from its results.json and raw/")
    args = ap.parse_args()
    if args.replot:
        return replot(Path(args.replot))
    only = args.only.split(",") if args.only else None
    unknown = sorted(set(only or []) - set(SCENARIO_KEYS))
    if unknown:
        ap.error(f"unknown scenario {', '.join(unknown)} in --only; known: "
                 + ", ".join(SCENARIO_KEYS))
    if only and "ab" in only and not args.baseline_bin:
        ap.error("--only ab compares two binaries: give --baseline-bin")
    corelb = args.corelb_bin.resolve()
    baseline = args.baseline_bin.resolve() if args.baseline_bin else None

    notes: list = []
    have_plt = ensure_matplotlib(notes)  # may re-execute this script inside bench/.venv
    os.chdir(ROOT)

    explicit = args.seconds or int(os.environ.get("BENCH_SECONDS") or 0)
    seconds = explicit or (QUICK_SECONDS if args.quick else FULL_SECONDS)
    sizes_seconds = None if explicit or args.quick else SIZES_SECONDS
    date = datetime.date.today().isoformat()
    host = slug(socket.gethostname().split(".")[0]) or "host"
    # A partial run gets its own folder, so it never wipes a full run of the same day.
    out = Path(args.out) if args.out else BENCH / "results" / (
        f"{date}-{host}{'-quick' if args.quick else ''}"
        + (f"-{'-'.join(only)}" if only else ""))
    out = out.resolve()
    shutil.rmtree(out / "raw", ignore_errors=True)  # a re-run the same day starts clean
    (out / "raw").mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.png")) + [out / "summary.md"]:
        old.unlink(missing_ok=True)

    for b in (corelb, BACKEND, *([baseline] if baseline else [])):
        if not b.exists():
            log(f"{b} is missing: run `cargo build --release --workspace` first")
            return 1

    apt = Apt(out / "raw" / "apt.log")
    tools = {}
    why = apt.ensure("wrk")
    if why:
        log(f"cannot benchmark without wrk: {why}")
        return 1
    tools["nginx"] = apt.ensure("nginx")
    tools["haproxy"] = apt.ensure("haproxy")
    for k, v in tools.items():
        if v:
            notes.append(f"{k} unavailable, its rows are failed: {v}")

    sup = Supervisor()
    atexit.register(sup.stop_all)

    def on_signal(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    # Explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    info = machine_info(corelb, baseline)
    caps = probe_caps(sup, corelb, notes)
    base_target = None
    if baseline:
        base_caps = probe_caps(sup, baseline, notes)
        common = caps.common(base_caps)
        if common != caps or common != base_caps:
            notes.append("the A/B pair runs with only the flags both binaries accept: "
                         f"{common}.")
        base_target = Target("corelb baseline", "corelb", workers=1, csv=False,
                             bin=baseline, caps=common)

    scenarios = build_scenarios(caps, args.reps, args.quick, set(only) if only else None,
                                base_target, sizes_seconds)
    total_runs = sum(s.reps * len(s.targets) for s in scenarios)
    total_s = sum(s.reps * len(s.targets) * ((s.seconds or seconds) + 1.5) for s in scenarios)
    log(f"{total_runs} wrk runs of {seconds} s"
        + "".join(f" ({s.key}: {s.seconds} s)" for s in scenarios if s.seconds)
        + f": about {total_s / 60:.1f} min; results in {rel(out, ROOT)}")
    if args.quick:
        notes.append("quick run: 1 repetition per target instead of "
                     f"{args.reps}, {seconds} s per wrk run, the seed scenario runs only "
                     "the seed's modes and the sizes scenario only "
                     + " and ".join(map(fmt_size, QUICK_SIZES)) + "; every other scenario "
                     "and target runs.")

    settings = {"date": date, "quick": args.quick, "seconds": seconds, "reps": args.reps,
                "invocation": shlex.join(["python3", "bench/bench.py", *sys.argv[1:]])
                + (f" (BENCH_SECONDS={os.environ['BENCH_SECONDS']})"
                   if os.environ.get("BENCH_SECONDS") else "")}
    bench = Bench(out, seconds, corelb, caps, tools, sup)
    started = time.monotonic()
    done = [0]

    def progress(sc, t, rep, r):
        done[0] += 1
        if r["ok"]:
            msg = (f"{r['rps']:.0f} rps, p50 {fmt_ms(r['latency_ms']['p50'])} ms, "
                   f"p99 {fmt_ms(r['latency_ms']['p99'])} ms, errors {r['errors_total']}"
                   + (f", CPU {cpu_total(r):.1f} µs/req" if r.get("cpu_us") else ""))
        else:
            msg = f"FAILED: {r['error']}"
        log(f"[{done[0]}/{total_runs}] {sc.key} {t.name} r{rep + 1}: {msg}")

    def finish(interrupted: bool) -> None:
        info["loadavg_end"] = "%.2f %.2f %.2f" % os.getloadavg()
        settings["elapsed"] = time.monotonic() - started
        plots = {}
        if have_plt:
            try:
                plots = make_plots(out, scenarios, bench.runs, notes)
            except Exception as e:  # a plotting bug must not lose the numbers
                notes.append(f"plotting failed: {type(e).__name__}: {e}")
        cmds = [c.replace(str(out / "raw"), "$RAW").replace(str(ROOT), "$ROOT")
                for c in sup.commands]
        header = [f"# RAW={out / 'raw'}", f"# ROOT={ROOT}"]
        write_summary(out, info, settings, scenarios, bench.runs, notes, plots,
                      header + cmds, interrupted)

    interrupted = False
    try:
        ports = take_ports(4)
        bench.proxy_port = ports[3]
        for sc in scenarios:
            try:
                bench.run_scenario(sc, ports[:3], progress)
            except Exception as e:
                sc.error = f"{type(e).__name__}: {e}"
                log(f"scenario {sc.key} failed: {sc.error}")
            finish(False)  # a summary after every scenario survives a later crash
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = True
        log(f"interrupted ({e or 'SIGINT'}); stopping everything")
    except BenchError as e:
        notes.append(f"bench stopped: {e}")
        log(f"bench stopped: {e}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sup.stop_all()
    finish(interrupted)
    log(f"done in {time.monotonic() - started:.0f} s: {rel(out / 'summary.md', ROOT)}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
