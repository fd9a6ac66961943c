#!/usr/bin/env bash
# A local Airflow UI on this machine, as separate processes (not `airflow standalone`,
# which leaves orphaned workers when stopped):
#   scripts/airflow-local.sh start   # api-server on 127.0.0.1:${AIRFLOW_PORT:-8080}, scheduler, dag-processor
#   scripts/airflow-local.sh stop    # stops each process group (SIGTERM, then SIGKILL after 30 s)
# Metadata: SQLite under ${AUDIT_DATA_DIR:-var}/airflow (LocalExecutor); evidence store:
# AUDIT_DATABASE_URL (default var/evidence.sqlite). Sign in as admin with the password in
# $AIRFLOW_HOME/passwords.json (generated on first start).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export AIRFLOW_HOME=${AIRFLOW_HOME:-$PWD/${AUDIT_DATA_DIR:-var}/airflow}
export AIRFLOW__CORE__DAGS_FOLDER=$PWD/dags AIRFLOW__CORE__LOAD_EXAMPLES=False HF_HUB_OFFLINE=1
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-4}
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$AIRFLOW_HOME/passwords.json
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:${AIRFLOW_PORT:-8080}/execution/
export PATH=$PWD/.venv/bin:$PATH
mkdir -p "$AIRFLOW_HOME"
pids=$AIRFLOW_HOME/pids

start() {
  [ -f "$AIRFLOW_HOME/.jwt" ] || { $PY -c 'import secrets; print(secrets.token_urlsafe(32))' > "$AIRFLOW_HOME/.jwt"; chmod 600 "$AIRFLOW_HOME/.jwt"; }
  export AIRFLOW__API_AUTH__JWT_SECRET=$(cat "$AIRFLOW_HOME/.jwt")
  [ -f "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" ] || \
    $PY -c 'import json, secrets; print(json.dumps({"admin": secrets.token_urlsafe(12)}))' > "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
  $PY -m audit_lib.cli db upgrade
  $PY -c 'from audit_lib.airflow_env import migrate_metadata, ensure_pools; migrate_metadata(); ensure_pools()'
  : > "$pids"
  for c in "api-server --host 127.0.0.1 --port ${AIRFLOW_PORT:-8080}" scheduler dag-processor; do
    name=${c%% *}
    setsid $PY -m airflow $c > "$AIRFLOW_HOME/$name.log" 2>&1 < /dev/null &
    echo "$! $name" >> "$pids"
  done
  echo "Airflow UI: http://127.0.0.1:${AIRFLOW_PORT:-8080} (admin / see $AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE); logs in $AIRFLOW_HOME"
}

stop() {
  [ -f "$pids" ] || { echo "not running"; return 0; }
  while read -r pid name; do kill -TERM -- "-$pid" 2>/dev/null || true; done < "$pids"
  for _ in $(seq 30); do
    alive=0; while read -r pid name; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done < "$pids"
    [ $alive = 0 ] && break; sleep 1
  done
  while read -r pid name; do kill -KILL -- "-$pid" 2>/dev/null || true; done < "$pids"
  rm -f "$pids"; echo "stopped"
}

case "${1:-}" in start) start ;; stop) stop ;; *) echo "usage: $0 start|stop" >&2; exit 2 ;; esac
