#!/usr/bin/env bash
# Set up (once) and run mailferry on its embedded default: 127.0.0.1:2525 (smtp), :2587
# (submission) and :2465 (smtps), web UI + /metrics on :8025, everything under ./var.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -e . >/dev/null
exec .venv/bin/mailferry serve "$@"
