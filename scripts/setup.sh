#!/usr/bin/env bash
# Idempotent setup: system packages, the .venv, and a running PostgreSQL.
# Quick when already done (a stamp keyed by the hash of pyproject.toml and constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*"; }

# --- system packages (WeasyPrint's libraries, pdftoppm, PostgreSQL, Chromium) -----------
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core poppler-utils postgresql \
           chromium fonts-liberation; do
  have_pkg "$pkg" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing system packages: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    log "missing system packages (install them as root): ${need[*]}"
  fi
fi

# --- PostgreSQL running ----------------------------------------------------------------
if command -v pg_lsclusters >/dev/null; then
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1 || true)
  if [ -n "$ver" ] && ! pg_lsclusters -h 2>/dev/null | awk '{print $4}' | grep -q online; then
    log "starting PostgreSQL $ver"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || log "could not start PostgreSQL"
  fi
fi
# Two roles: the owner runs the migrations (AUDIT_MIGRATION_DATABASE_URL) and retention;
# the application role (AUDIT_DATABASE_URL) may insert evidence, findings and reports but
# never change them (grants made by migration 0005). Idempotent; trust auth locally.
if command -v psql >/dev/null; then
  app_role=${AUDIT_APP_DB_ROLE:-encoder_audit_app}
  psql -h 127.0.0.1 -U postgres -qtAc "SELECT 1" >/dev/null 2>&1 && psql -h 127.0.0.1 -U postgres -q <<SQL || log "could not create the database roles"
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'encoder_audit_owner') THEN
    CREATE ROLE encoder_audit_owner LOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${app_role}') THEN
    CREATE ROLE "${app_role}" LOGIN; END IF;
  ALTER ROLE "${app_role}" LOGIN;
END \$\$;
SQL
fi

# --- Python environment ------------------------------------------------------------------
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=".venv/.stamp-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || { log "creating .venv"; "$PY" -m venv .venv; }
  log "installing Python packages (a few minutes on a fresh machine)"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test]" -c constraints.txt
  rm -f .venv/.stamp-*
  touch "$stamp"
fi
log "ready"
