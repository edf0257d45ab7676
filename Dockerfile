# syntax=docker/dockerfile:1
# The trackop operator image:
#   docker build -t trackop:dev .
# Two stages: the builder makes a wheel of trackop and installs it, with exactly the
# runtime dependencies pinned in constraints.txt (hack/constraints.py), into a virtualenv
# at /opt/trackop; the final stage is that virtualenv on a slim Python, run as a non-root
# user, writing nothing outside /tmp (the chart mounts an emptyDir there and sets
# readOnlyRootFilesystem). Both stages use the same base image, so the virtualenv's
# interpreter path is the same in both.
#
# BASE_IMAGE is any image with CPython 3.11 as `python` and its venv module, useradd and
# CA certificates. Its default is what users get; the test bed, which reaches no registry,
# passes one it made from Debian bookworm's packages (trackop_testbed.node.images).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/trackop
WORKDIR /src
# Dependencies first, in a layer of their own: it is rebuilt only when the pins change.
COPY constraints.txt ./
RUN /opt/trackop/bin/pip install --no-deps --requirement constraints.txt
COPY pyproject.toml README.md ./
COPY src ./src
# The wheel is installed against the same constraints: a requirement the pins do not cover
# fails the build here, not at the first import in a cluster. pip compiles the bytecode
# now, since the final image cannot write it.
RUN /opt/trackop/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/trackop/bin/pip install --no-index --find-links /tmp/wheels --constraint constraints.txt trackop \
 && /opt/trackop/bin/pip check \
 && cp constraints.txt /opt/trackop/constraints.txt

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
# Declared again inside the stage, for the label below.
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="trackop" \
      org.opencontainers.image.description="Kubernetes operator that provisions PostgreSQL for MLflow, applies its schema, tunes the server, runs the tracking server and injects MLFLOW_TRACKING_URI into training pods" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
# A fixed numeric uid/gid, so runAsNonRoot can verify it without a passwd lookup; the
# entry exists anyway for libraries that ask for the user's name or home.
RUN groupadd --system --gid 10001 trackop \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin trackop
COPY --from=builder /opt/trackop /opt/trackop
ENV PATH=/opt/trackop/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /tmp
USER 10001:10001
# 8080 liveness (/healthz), 9090 metrics, 9443 admission webhooks (HTTPS).
EXPOSE 8080 9090 9443
ENTRYPOINT ["trackop"]
CMD ["run", "--all-namespaces"]
