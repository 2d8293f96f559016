#!/usr/bin/env bash
# The one list of what corelb's tests, `make run PROTOCOL=grpc`, benchmarks and CI need from
# outside cargo, and the one place that installs it.
#
#   scripts/deps.sh GROUP...     GROUP: test, grpc, bench, browser
#
# As root with apt-get, whatever is missing is installed (one `apt-get update` first).
# Otherwise it prints the one command that would install it, and which tests will skip.
# The gRPC groups (test, grpc) also make the Python venv (tests/grpc/setup.sh).
# Exit status: 0 when every tool of the groups is there afterwards, 1 when any is missing.
set -uo pipefail
cd "$(dirname "$0")/.."

# command      Debian package   groups            what skips without it
TABLE='
curl           curl             test,bench        tests/h2.rs curl cases, tests/proxy.rs curl cases
nghttp         nghttp2-client   test,bench        tests/h2.rs nghttp cases
h2load         nghttp2-client   test,bench        tests/h2.rs and tests/h2c.rs h2load cases, bench/h2bench.py
wrk            wrk              test,bench        tests/ops.rs reloads under load, bench/bench.py
python3        python3          test,grpc,bench   the gRPC interop suite, tests/grpc_health.rs, tests/discovery.rs
venv           python3-venv     test,grpc         the gRPC interop suite, tests/grpc_health.rs, tests/discovery.rs
nginx          nginx-light      test,bench        tests/tls_upstream.rs mTLS backend, NGINX baselines of make bench and make conformance
haproxy        haproxy          bench             HAProxy baselines of make bench and make conformance
openssl        openssl          bench,browser     bench/tls_bench.py (its certificate, full handshakes with s_time), the browser TLS test
chromium       chromium         browser           make test-browser
node           nodejs           browser           make test-browser
npm            npm              browser           make test-browser
'

[ $# -gt 0 ] || { echo "usage: scripts/deps.sh test|grpc|bench|browser..." >&2; exit 2; }
for g in "$@"; do
  case $g in test | grpc | bench | browser) ;; *) echo "deps: unknown group '$g'" >&2; exit 2 ;; esac
done

# Whether the command of a table row is there.
present() {
  case $1 in
    venv) command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' 2>/dev/null ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# Rows of the table that belong to any of the groups asked for and are missing.
missing_rows() {
  while read -r cmd pkg groups why; do
    [ -n "$cmd" ] || continue
    for g in "$@"; do
      if [[ ",$groups," == *",$g,"* ]]; then
        present "$cmd" || printf '%s %s %s\n' "$cmd" "$pkg" "$why"
        break
      fi
    done
  done <<<"$TABLE"
}

missing=$(missing_rows "$@")
if [ -n "$missing" ]; then
  pkgs=$(awk '{print $2}' <<<"$missing" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "deps: installing ${pkgs% }"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || echo "deps: apt-get update failed" >&2
    # shellcheck disable=SC2086
    apt-get install -y -qq $pkgs >/dev/null ||
      echo "deps: apt-get install $pkgs failed" >&2
    missing=$(missing_rows "$@")
  fi
fi
if [ -n "$missing" ]; then
  pkgs=$(awk '{print $2}' <<<"$missing" | sort -u | tr '\n' ' ')
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo "
  echo "deps: missing $(awk '{print $1}' <<<"$missing" | tr '\n' ' ')" >&2
  echo "deps: install with: ${sudo}apt-get install -y ${pkgs% }" >&2
  while read -r cmd _ why; do echo "deps:   without $cmd: $why skip" >&2; done <<<"$missing"
fi

# The gRPC venv (grpcio, pytest, dnslib and the generated stubs).
status=0
[ -z "$missing" ] || status=1
if [[ " $* " == *" test "* || " $* " == *" grpc "* ]]; then
  if present venv; then
    tests/grpc/setup.sh || { echo "deps: tests/grpc/setup.sh failed: the gRPC tests will skip" >&2; status=1; }
  else
    status=1
  fi
fi
exit $status
