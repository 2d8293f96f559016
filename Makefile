# corelb: build, run, test, lint, bench.
#   make run MODE=adaptive_sma UPSTREAM=per-request   backends A, B, C + proxy on :9090
#   make run PROTOCOL=grpc                            gRPC backends on 50051-50053 + proxy
#   make run TLS=9443                                 also HTTPS and HTTP/2 (ALPN) on :9443
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
# TLS=PORT: also a TLS listener on PORT with a self-signed certificate for localhost and
# 127.0.0.1 (target/tls/, made once with openssl); browsers will ask to trust it.
TLS ?=
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
	bench-sizes bench-ab bench-h2 bench-h2-quick bench-tail bench-tls bench-tls-quick abuse \
	conformance fuzz clean

all: build

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --workspace

# `make run`: backends A, B, C on 8081-8083 (gRPC: 50051-50053) with the seed's latency
# profiles, then the proxy on $(PORT), all under scripts/supervise.sh: Ctrl-C stops them
# all, and any one that exits (a port taken, a bad flag) stops the rest and fails the run.
backend_port = $(shell echo $$(($(BACKEND_BASE) + $(2))))
BACKEND = "backend $(1) on 127.0.0.1:$(call backend_port,$(1),$(2))" \
	"$(BIN)/corelb-backend --id $(1) --port $(call backend_port,$(1),$(2)) --profile $(PROFILE) $(BACKEND_ARGS)"
BACKENDS = $(call BACKEND,A,1) $(call BACKEND,B,2) $(call BACKEND,C,3)
# (A variable: the comma in its SAN list would split an $(if ...) written inline.)
MAKE_TLS_CERT = test -s target/tls/cert.pem || { mkdir -p target/tls && openssl req -x509 \
	-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 -subj /CN=localhost \
	-addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout target/tls/key.pem \
	-out target/tls/cert.pem 2>/dev/null && echo "make run: made target/tls/cert.pem (self-signed, localhost)"; }
TLS_ARGS = $(if $(TLS),--tls-listen $(TLS) --tls-cert target/tls/cert.pem --tls-key target/tls/key.pem)
PROXY_CMD = "corelb on port $(PORT)$(if $(TLS), and TLS port $(TLS))" \
	"$(BIN)/corelb $(MODE) --upstream $(UPSTREAM) --listen $(PORT) $(if $(WORKERS),--workers $(WORKERS)) $(TLS_ARGS) $(RUN_ARGS) $(ARGS)"

# The seed's config format, naming the gRPC backends as the seed named its TTS servers.
GRPC_SERVER = {"name":"tts@container$(1)","address":"127.0.0.1","port":5005$(1),"priority":0,"load":1,"protocol":"h2c"}
WRITE_RUN_CONFIG = printf '%s\n' '{"heartbeatInterval":2,"heartbeatTimeout":1,"servers":[$(call GRPC_SERVER,1),$(call GRPC_SERVER,2),$(call GRPC_SERVER,3)]}' > $(RUN_CONFIG)

# PROTOCOL=grpc also readies the README's client example (target/grpc-venv, the stubs).
run: release
	$(if $(TLS),@$(MAKE_TLS_CERT))
	$(if $(RUN_CONFIG),@$(WRITE_RUN_CONFIG))
	$(if $(RUN_CONFIG),@scripts/deps.sh grpc || echo "make run: the gRPC client example needs what scripts/deps.sh named above")
	@scripts/supervise.sh $(BACKENDS) $(PROXY_CMD)

# Only the three backends (for running the proxy by hand or under a debugger).
backends: release
	@scripts/supervise.sh $(BACKENDS)

# scripts/deps.sh installs what the tests need (as root with apt-get) or says what will skip.
# Each skipped test writes a line to target/test-skips.log, counted at the end; when deps.sh
# found every tool, a test that would skip fails instead (CORELB_STRICT_SKIPS=1).
SKIP_LOG := $(CURDIR)/target/test-skips.log
test:
	@mkdir -p target; if scripts/deps.sh test; then echo 1; else echo 0; fi > target/.strict-skips
	$(CARGO) build --workspace --bins
	@rm -f $(SKIP_LOG); \
	CORELB_SKIP_LOG=$(SKIP_LOG) CORELB_STRICT_SKIPS=$$(cat target/.strict-skips) $(CARGO) test --workspace; rc=$$?; \
	n=$$(cat $(SKIP_LOG) 2>/dev/null | wc -l); \
	echo "make test: $$n tests skipped"; sed 's/^/  skipped: /' $(SKIP_LOG) 2>/dev/null; \
	exit $$rc

# Only the gRPC interop suite (tests/grpc: grpcio against corelb-backend --protocol grpc,
# and tests/grpc/tts_server.py against tts_client.py); `make test` runs it too, through
# tests/grpc_interop.rs. tests/grpc/setup.sh makes the venv (target/grpc-venv) once.
GRPC_PY := target/grpc-venv/bin/python
test-grpc:
	$(CARGO) build --workspace --bins
	scripts/deps.sh grpc
	cd tests/grpc && PYTHONDONTWRITEBYTECODE=1 ../../$(GRPC_PY) -m pytest -q -p no:cacheprovider .

# HTTP/1.1 conformance (tests/conformance/cases.rs) of corelb, NGINX and HAProxy side by
# side: per-case pass/FAIL and the three scores. CONFORMANCE_DETAILS=1 prints each failure.
# (The corelb part alone runs in `make test`.)
conformance:
	$(BENCH_DEPS)
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
#                      the HTTP/2 and gRPC scenarios of bench/h2bench.py (about 11 min) and
#                      the tail latency of bench/tail.py, HTTP and gRPC (about 8 min)
#   make bench-quick   1 repetition of 3 s runs, seed scenario with the seed's modes only,
#                      sizes scenario with 4 KiB and 1 MiB only (about 3 min plus the build)
#   make bench-sizes   only the body-size sweep: 0 B to 16 MiB, downloads and uploads, direct,
#                      corelb, NGINX, HAProxy; 3 repetitions of 10 s runs (about 23 min)
#   make bench-ab BASELINE=path/to/old/corelb   CPU per request of target/release/corelb
#                      against BASELINE, alternately, medians of BENCH_REPS (default 3)
#   make bench-h2, make bench-h2-quick     HTTP/2 and gRPC (bench/h2bench.py), below
#   make bench-tail    tail latency with hedged requests, HTTP and gRPC (bench/tail.py), below
#   make bench-tls, make bench-tls-quick   TLS termination (bench/tls_bench.py), below
PYTHON ?= python3
BASELINE ?=
# wrk, nghttp2-client, nginx, haproxy and openssl: installed, or named with the command that would.
BENCH_DEPS = @scripts/deps.sh bench || echo "make: a missing tool's baselines will be left out"

bench: release
	$(BENCH_DEPS)
	$(PYTHON) bench/bench.py
	$(PYTHON) bench/h2bench.py
	$(PYTHON) bench/tail.py --seconds 20
	$(PYTHON) bench/tail.py --grpc --seconds 20

bench-quick: release
	$(BENCH_DEPS)
	$(PYTHON) bench/bench.py --quick

bench-sizes: release
	$(BENCH_DEPS)
	$(PYTHON) bench/bench.py --only sizes

bench-ab: release
	$(BENCH_DEPS)
	@test -n "$(BASELINE)" || { echo "make bench-ab needs BASELINE=path/to/corelb"; exit 2; }
	$(PYTHON) bench/bench.py --only ab --baseline-bin $(BASELINE)

# HTTP/2 and gRPC (bench/h2bench.py): h2load sending gRPC unary calls to a gRPC backend
# directly, to corelb (h2c upstreams), NGINX (grpc_pass) and HAProxy (proto h2), 1 worker
# each; then the seed's latencies behind corelb's round-robin and adaptive modes. Ports
# 127.0.0.1:18200-18299; results in bench/results/<date>-<host>-h2[-quick]/.
#   make bench-h2         3 repetitions of 20 s runs (about 11 min)
#   make bench-h2-quick   1 repetition of 3 s runs, a functional check (under 1 min)
bench-h2: release
	$(BENCH_DEPS)
	$(PYTHON) bench/h2bench.py

bench-h2-quick: release
	$(BENCH_DEPS)
	$(PYTHON) bench/h2bench.py --quick

# Tail latency with hedged requests (bench/tail.py): three backends `--profile fixed:2
# --stall 0.02:500` (2% of requests wait 500 ms more) behind corelb without and with hedging,
# NGINX and HAProxy, round robin, 1 worker/thread each, targets alternating, medians of 3
# repetitions of 20 s runs (about 4 min each). First HTTP/1.1 (`wrk -t2 -c32`, corelb
# `--hedge-delay p95`), then gRPC unary calls (`--grpc`: `h2load -t1 -c32 -m1`, corelb
# h2c servers with a hedgingPolicy for /tts.TTS/*; NGINX grpc_pass, HAProxy proto h2).
# Each prints a markdown table: requests (calls) per second, p50/p99/p99.9 latency and
# backend requests per client request.
bench-tail: release
	$(BENCH_DEPS)
	$(PYTHON) bench/tail.py --seconds 20
	$(PYTHON) bench/tail.py --grpc --seconds 20

# TLS termination (bench/tls_bench.py): corelb (rustls, aws-lc-rs), NGINX (`listen ... ssl`)
# and HAProxy (`bind ... ssl crt`), 1 worker/thread each, one ECDSA P-256 certificate made for
# the run, in front of one fast backend: full handshakes (`openssl s_time -new`; wrk and
# h2load resume sessions), resumed handshakes (`wrk -H "Connection: close"`), keep-alive
# HTTPS, 1 MiB bodies, memory per idle TLS connection. Proxies alternate run by run, medians;
# CPU per request from /proc. Ports 127.0.0.1:18300-18399; the report is printed and written
# to bench/results/tls-<timestamp>[-quick].md (runs in a .json beside it).
#   make bench-tls         3 repetitions of 10 s runs (about 11 min)
#   make bench-tls-quick   1 repetition of 3 s runs, a functional check (about 2 min)
bench-tls: release
	$(BENCH_DEPS)
	$(PYTHON) bench/tls_bench.py --reps 3 --duration 10s

bench-tls-quick: release
	$(BENCH_DEPS)
	$(PYTHON) bench/tls_bench.py --quick

# Load and abuse (tests/abuse.rs at full size, figures printed): 10,000 keep-alive clients
# on 1 worker, 2,000 slowloris connections, 1,000 resets mid-request; about 40 s.
abuse:
	$(PYTHON) bench/abuse.py

clean:
	$(CARGO) clean
