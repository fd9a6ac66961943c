#!/usr/bin/env bash
# The embedded demo: the Airflow DAGs in-process (dag.test) on SQLite, on the reference zoo,
# end to end to PDF reports. Options pass through, e.g. `scripts/demo.sh --no-enrol`.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m audit_lib.cli run demo "$@"
