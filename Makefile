# corelb: build, run, test, lint, bench.
#   make run MODE=adaptive_sma UPSTREAM=per-request   backends A, B, C + proxy on :9090
#   make run PROTOCOL=grpc                            gRPC backends on 50051-50053 + proxy
#   make test                                         unit + integration tests
SHELL := /bin/bash
CARGO ?= cargo
MODE ?= round-robin
UPSTREAM ?= persistent
PORT ?= 9090
WORKERS ?=
PROFILE ?= seed
ARGS ?=
PROTOCOL ?= http
BIN := target/release

# PROTOCOL=grpc: the backends speak gRPC (the TTS service of backend/proto/tts.proto) on
# 50051-50053, the seed's gRPC port, and corelb gets a generated config in the seed's format
# naming them (tts@container1..3) as h2c servers: every call is balanced on its own.
ifeq ($(PROTOCOL),grpc)
BACKEND_BASE := 50050
BACKEND_ARGS := --protocol grpc
RUN_CONFIG := target/run-grpc.json
RUN_ARGS := --config $(RUN_CONFIG) --health-check tcp
else ifeq ($(PROTOCOL),http)
BACKEND_BASE := 8080
else
$(error PROTOCOL=$(PROTOCOL): expected http or grpc)
endif

.PHONY: all build release run backends test test-grpc test-browser lint fmt bench bench-quick \
	bench-sizes bench-ab bench-h2 bench-h2-quick abuse conformance fuzz clean

all: build

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --workspace

# `make run`: backends A, B, C on 8081-8083 (gRPC: 50051-50053) with the seed's latency
# profiles, then the proxy on $(PORT).
# Starts A, B, C in the background, collecting their pids in $$pids (used inside the
# recipes below).
START_BACKENDS = for id in A B C; do \
	  port=$$(($(BACKEND_BASE) + $$(printf '%d' "'$$id") - 64)); \
	  $(BIN)/corelb-backend --id $$id --port $$port --profile $(PROFILE) $(BACKEND_ARGS) & \
	  pids="$$pids $$!"; \
	done

# The seed's config format, naming the gRPC backends as the seed named its TTS servers.
GRPC_SERVER = {"name":"tts@container$(1)","address":"127.0.0.1","port":5005$(1),"priority":0,"load":1,"protocol":"h2c"}
WRITE_RUN_CONFIG = printf '%s\n' '{"heartbeatInterval":2,"heartbeatTimeout":1,"servers":[$(call GRPC_SERVER,1),$(call GRPC_SERVER,2),$(call GRPC_SERVER,3)]}' > $(RUN_CONFIG)

# Ctrl-C (or any child exiting) stops everything: the children run in their own process
# groups (set -m, so they do not ignore signals), so the trap signals each one by pid; corelb
# drains and exits 0 on SIGTERM.
STOP_ALL = trap 'kill $$pids 2>/dev/null; wait; exit 0' INT TERM

run: release
	$(if $(RUN_CONFIG),@$(WRITE_RUN_CONFIG))
	@set -m; pids=""; $(STOP_ALL); \
	$(START_BACKENDS); \
	sleep 0.3; \
	$(BIN)/corelb $(MODE) --upstream $(UPSTREAM) --listen $(PORT) $(if $(WORKERS),--workers $(WORKERS)) $(RUN_ARGS) $(ARGS) & pids="$$pids $$!"; \
	wait -n; kill $$pids 2>/dev/null; wait

# Only the three backends (for running the proxy by hand or under a debugger).
backends: release
	@set -m; pids=""; $(STOP_ALL); \
	$(START_BACKENDS); \
	wait -n; kill $$pids 2>/dev/null; wait

# The gRPC suite's venv is made (or checked, which is quick) first; where it cannot be made
# (no python3-venv), tests/grpc_interop.rs says it skipped.
test:
	@tests/grpc/setup.sh || echo "make: tests/grpc/setup.sh failed: the gRPC interop suite will be skipped"
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

# Only the gRPC interop suite (tests/grpc: grpcio against corelb-backend --protocol grpc,
# and tests/grpc/tts_server.py against tts_client.py); `make test` runs it too, through
# tests/grpc_interop.rs. tests/grpc/setup.sh makes the venv (target/grpc-venv) once.
GRPC_PY := target/grpc-venv/bin/python
test-grpc:
	$(CARGO) build --workspace --bins
	tests/grpc/setup.sh
	cd tests/grpc && PYTHONDONTWRITEBYTECODE=1 ../../$(GRPC_PY) -m pytest -q -p no:cacheprovider .

# HTTP/1.1 conformance (tests/conformance/cases.rs) of corelb, NGINX and HAProxy side by
# side: per-case pass/FAIL and the three scores. CONFORMANCE_DETAILS=1 prints each failure.
# (The corelb part alone runs in `make test`.)
conformance:
	$(CARGO) build --workspace --bins
	$(CARGO) test --test conformance compare -- --ignored --nocapture

# cargo-fuzz targets in fuzz/ (nightly; `cargo install cargo-fuzz`), each for FUZZ_SECONDS.
# New inputs go to target/fuzz-corpus/NAME; the committed seeds in fuzz/corpus/NAME are read
# but not written. Crashes land in fuzz/artifacts/NAME: add them to fuzz/corpus/NAME
# (tests/fuzz_corpus.rs replays that directory in `make test`).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= request_head response_head chunked h2_frames hpack_decode
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t; \
	  $(CARGO) +nightly fuzz run $$t target/fuzz-corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# The dashboard in headless Chromium (Debian's chromium; playwright-core from npm drives it):
# a short bounded load, charts and table checked, screenshot in target/browser/.
CHROMIUM ?= /usr/bin/chromium
test-browser:
	$(CARGO) build --workspace --bins
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	cd tests/browser && CHROMIUM=$(CHROMIUM) node --test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Benchmarks (bench/bench.py): wrk against corelb, NGINX and HAProxy on 127.0.0.1:18100-18199;
# results in bench/results/<date>-<host>[-quick]/. BENCH_SECONDS sets each wrk run's length.
#   make bench         3 repetitions of 30 s runs (about 40 min with corelb's 6 modes), then
#                      the HTTP/2 and gRPC scenarios of bench/h2bench.py (about 11 min)
#   make bench-quick   1 repetition of 3 s runs, seed scenario with the seed's modes only,
#                      sizes scenario with 4 KiB and 1 MiB only (about 3 min plus the build)
#   make bench-sizes   only the body-size sweep: 0 B to 16 MiB, downloads and uploads, direct,
#                      corelb, NGINX, HAProxy; 3 repetitions of 10 s runs (about 23 min)
#   make bench-ab BASELINE=path/to/old/corelb   CPU per request of target/release/corelb
#                      against BASELINE, alternately, medians of BENCH_REPS (default 3)
PYTHON ?= python3
BASELINE ?=

bench: release
	$(PYTHON) bench/bench.py
	$(PYTHON) bench/h2bench.py

bench-quick: release
	$(PYTHON) bench/bench.py --quick

bench-sizes: release
	$(PYTHON) bench/bench.py --only sizes

bench-ab: release
	@test -n "$(BASELINE)" || { echo "make bench-ab needs BASELINE=path/to/corelb"; exit 2; }
	$(PYTHON) bench/bench.py --only ab --baseline-bin $(BASELINE)

# HTTP/2 and gRPC (bench/h2bench.py): h2load sending gRPC unary calls to a gRPC backend
# directly, to corelb (h2c upstreams), NGINX (grpc_pass) and HAProxy (proto h2), 1 worker
# each; then the seed's latencies behind corelb's round-robin and adaptive modes. Ports
# 127.0.0.1:18200-18299; results in bench/results/<date>-<host>-h2[-quick]/.
#   make bench-h2         3 repetitions of 20 s runs (about 11 min)
#   make bench-h2-quick   1 repetition of 3 s runs, a functional check (under 1 min)
bench-h2: release
	$(PYTHON) bench/h2bench.py

bench-h2-quick: release
	$(PYTHON) bench/h2bench.py --quick

# Load and abuse (tests/abuse.rs at full size, figures printed): 10,000 keep-alive clients
# on 1 worker, 2,000 slowloris connections, 1,000 resets mid-request; about 40 s.
abuse:
	$(PYTHON) bench/abuse.py

clean:
	$(CARGO) clean
