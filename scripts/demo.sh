#!/usr/bin/env bash
# The embedded demo: everything on this machine, SQLite, no network.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m audit_lib.demo
