#!/usr/bin/env bash
# The one command that sets up and runs every test: lint, unit, integration and end-to-end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
