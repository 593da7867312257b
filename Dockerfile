# Floodgate image: the same image runs the API (`floodgate api`) and workers (`floodgate worker`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FLOODGATE_DATA_DIR=/var/lib/floodgate \
    FLOODGATE_MODEL_DIR=/opt/floodgate/models/multilingual-e5-small \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

WORKDIR /opt/floodgate
# Point this at a CPU-only torch wheel index when building outside an environment that
# already provides one; the pinned version is what Floodgate is tested with.
ARG PIP_EXTRA_INDEX_URL=""
# exactly the tested versions, with their hashes (requirements.lock; torch 2.13.0 CPU)
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY service ./service
COPY policies ./policies
COPY models ./models
COPY seeds ./seeds
RUN pip install --no-deps --no-build-isolation . \
    # converting the encoder at build time: containers start without doing it, offline
    && floodgate model build \
    && useradd --system --home /var/lib/floodgate floodgate \
    && mkdir -p /var/lib/floodgate && chown floodgate /var/lib/floodgate

USER floodgate
EXPOSE 8000
CMD ["floodgate", "api", "--host", "0.0.0.0", "--port", "8000"]
