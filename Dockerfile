# The encoder-audit image: Airflow 3.3 with the project installed. One image for every
# Airflow component, both Celery workers (CPU and GPU) and the DPO web app.
#   docker compose build
# torch 2.14.1 from PyPI is a CUDA build: the GPU worker uses the GPU it is given, the
# other containers run the same code on the CPU.
FROM apache/airflow:3.3.2-python3.11

USER root
# WeasyPrint's libraries and fonts (PDF reports), poppler for report checks.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core poppler-utils \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

USER airflow
ENV ENCODER_AUDIT_HOME=/opt/encoder-audit \
    HF_HUB_OFFLINE=1 \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/encoder-audit/dags \
    AUDIT_DATA_DIR=/opt/encoder-audit/var

WORKDIR /opt/encoder-audit
# Dependencies first (cached layer), then the code.
COPY --chown=airflow:root pyproject.toml constraints.txt README.md ./
RUN mkdir -p audit_lib && touch audit_lib/__init__.py \
 && pip install --no-cache-dir -e ".[test]" -c constraints.txt
COPY --chown=airflow:root audit_lib ./audit_lib
COPY --chown=airflow:root migrations ./migrations
COPY --chown=airflow:root templates ./templates
COPY --chown=airflow:root dags ./dags
COPY --chown=airflow:root scripts ./scripts
RUN mkdir -p var
