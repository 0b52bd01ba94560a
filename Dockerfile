# syntax=docker/dockerfile:1
# Multi-stage: wheels are built with a compiler in the first stage; the final image has
# only the virtual environment, runs as a non-root user and checks /readyz.

FROM python:3.13-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY service ./service
COPY models ./models
COPY explainers ./explainers
COPY migrations ./migrations
RUN python -m venv /opt/tabxai \
    && /opt/tabxai/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/tabxai/bin/pip install --no-cache-dir -c constraints.txt .

FROM python:3.13-slim
# libgomp: the OpenMP runtime XGBoost and LightGBM link against.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 tabxai
COPY --from=build /opt/tabxai /opt/tabxai
ENV PATH=/opt/tabxai/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TABXAI_DATA_DIR=/var/lib/tabxai \
    TABXAI_HOST=0.0.0.0 \
    TABXAI_PORT=8000
# keys/: the compose file's volume for the first API key; a new volume takes this owner.
RUN mkdir -p /var/lib/tabxai/keys && chown -R tabxai:tabxai /var/lib/tabxai
USER tabxai
WORKDIR /home/tabxai
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
    CMD curl -fsS "http://127.0.0.1:${TABXAI_PORT}/readyz" || exit 1
CMD ["tabxai", "serve"]
