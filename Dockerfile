# syntax=docker/dockerfile:1
# One image for every ktb process; the container command picks the role:
#   ktb bridge | ktb api | ktb provision | python -m services.<name> worker|server
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/ktb
# Dependencies first, pinned by constraints.txt, so code changes reuse this layer.
COPY pyproject.toml constraints.txt README.md ./
COPY bridge/__init__.py bridge/py.typed ./bridge/
RUN /opt/ktb/bin/pip install -c constraints.txt .
COPY bridge ./bridge
RUN /opt/ktb/bin/pip install --no-deps --force-reinstall -c constraints.txt .

FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 ktb \
    && useradd --system --uid 10001 --gid ktb --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin ktb \
    && mkdir -p /app /data \
    && chown ktb:ktb /data
COPY --from=build /opt/ktb /opt/ktb
WORKDIR /app
COPY schemas ./schemas
COPY routes.yaml ./
# The example services are not part of the distribution: `python -m services.<name>`
# finds them here, in the working directory.
COPY services ./services
ENV PATH=/opt/ktb/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KTB_SCHEMAS_DIR=/app/schemas \
    KTB_ROUTES_FILE=/app/routes.yaml \
    KTB_DATA_DIR=/data \
    KTB_LOG_FORMAT=json
USER ktb:ktb
VOLUME ["/data"]
CMD ["ktb", "bridge"]
