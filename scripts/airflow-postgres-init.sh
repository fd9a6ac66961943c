#!/usr/bin/env bash
# Run once by the postgres container (docker-entrypoint-initdb.d): two databases with two
# owners, so that Airflow's metadata and the evidence store never share a schema, a
# migration table or a role. Passwords come from the container's environment.
set -euo pipefail
: "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD}"
: "${AUDIT_DB_PASSWORD:?set AUDIT_DB_PASSWORD}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v airflow_pw="$AIRFLOW_DB_PASSWORD" -v audit_pw="$AUDIT_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE audit LOGIN PASSWORD :'audit_pw';
CREATE DATABASE evidence OWNER audit;
REVOKE ALL ON DATABASE evidence FROM PUBLIC;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
SQL
