#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) from the repository root; PYTHON picks the interpreter.
#   bash bench/gpu_check.sh [--smoke] [--compile best|all|none] [--compile-all] ...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec ${PYTHON:-.venv/bin/python} bench/gpu_check.py "$@"
