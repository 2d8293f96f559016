#!/usr/bin/env bash
# Python environment of the gRPC interop tests (and of the DNS server of tests/discovery.rs): a venv at target/grpc-venv with the pinned
# packages of tests/grpc/requirements.txt, and stubs generated from backend/proto/tts.proto
# into target/grpc-gen. Idempotent: reinstalls only when requirements.txt changed.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/grpc-venv
req=tests/grpc/requirements.txt
stamp=$venv/.installed-requirements
python=${PYTHON:-python3}

if ! cmp -s "$req" "$stamp" 2>/dev/null; then
  # A venv made without ensurepip (Debian without python3-venv) has no pip: start over.
  [ -x "$venv/bin/pip" ] || { rm -rf "$venv"; "$python" -m venv "$venv"; }
  # `python -m pip`, not bin/pip: a venv copied from another checkout keeps bin/pip's
  # shebang pointing at the original, while its python installs into this one.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
"$venv/bin/python" tests/grpc/stubs.py
