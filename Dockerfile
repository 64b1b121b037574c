# coopprune on CPU: pinned dependencies, non-root, no weights or data baked in.
# Models and data are fetched at run time into the /data volume ($COOPPRUNE_HOME).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    COOPPRUNE_HOME=/data \
    HF_HOME=/data/hf

RUN useradd --create-home --uid 1000 coop && mkdir -p /data && chown coop /data
WORKDIR /app

# CPU build of torch first, so the lock's torch==2.13.0 is already satisfied (no CUDA wheels).
COPY requirements.lock ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install -r requirements.lock

COPY pyproject.toml README.md params.yaml ./
COPY coopprune ./coopprune
COPY tasks ./tasks
COPY flows ./flows
RUN pip install --no-deps .

USER 1000:1000
VOLUME ["/data"]
# The package installs only the library; tasks/ and flows/ are imported from /app (the flow runs from /data).
ENV PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_HOME=/data/prefect \
    PYTHONPATH=/app
# Outputs (runs/, mlflow.db) land in the volume, next to the fetched models and data.
WORKDIR /data
# The prune_release flow on the default params; `docker run IMAGE coopprune ...` runs the CLI instead.
CMD ["python", "-m", "flows.prune_release", "--params", "/app/params.yaml"]
