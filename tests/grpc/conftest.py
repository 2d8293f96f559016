"""pytest fixtures of the gRPC interop tests: real servers on free loopback ports.

`start_server` runs a command that prints a line containing "listening on HOST:PORT"
(corelb-backend and tests/grpc/tts_server.py both do), waits for it, and stops the process
at the end of the test or module. CORELB_BACKEND overrides the backend binary's path.
"""

import os
import subprocess
import sys
import threading

import grpc
import pytest

import stubs

HERE = os.path.dirname(os.path.abspath(__file__))
BACKEND = os.environ.get(
    "CORELB_BACKEND", os.path.join(stubs.ROOT, "target", "debug", "corelb-backend")
)
TTS_SERVER = os.path.join(HERE, "tts_server.py")
TTS_CLIENT = os.path.join(HERE, "tts_client.py")
START_TIMEOUT = 15


class Server:
    """A running server process and its loopback address."""

    def __init__(self, argv):
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        found = {}

        def read():
            for line in self.proc.stdout:
                if "listening on " in line and "addr" not in found:
                    found["addr"] = line.split("listening on ")[1].split()[0]
                    ready.set()
            ready.set()

        ready = threading.Event()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(START_TIMEOUT) or "addr" not in found:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not report its address: {argv}")
        self.addr = found["addr"]
        self.port = int(self.addr.rsplit(":", 1)[1])

    def channel(self):
        return grpc.insecure_channel(self.addr)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def backend_argv(*extra, id="A", profile="fast"):
    if not os.path.exists(BACKEND):
        pytest.fail(f"{BACKEND} missing: run `cargo build --workspace --bins` first")
    return [BACKEND, "--protocol", "grpc", "--port", "0", "--id", id, "--profile", profile, *extra]


def tts_server_argv(*extra, id="P"):
    return [sys.executable, TTS_SERVER, "--port", "0", "--id", id, *extra]


@pytest.fixture
def start_server():
    """start_server(argv) -> Server, stopped when the test ends."""
    started = []

    def start(argv):
        s = Server(argv)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def backend():
    """One fast gRPC corelb-backend (id A) shared by a module's tests."""
    s = Server(backend_argv())
    yield s
    s.stop()


@pytest.fixture(scope="module")
def channel(backend):
    with backend.channel() as ch:
        yield ch
