# syntax=docker/dockerfile:1
# twotower: the serving image. Serving dependencies only (no PyTorch); the demo model, the MovieLens
# catalog and its index are built in, so `docker run -p 8000:8000 twotower` alone serves the demo.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY models ./models
COPY index_store ./index_store
COPY app ./app
# The same install and build commands as `make serve` (Makefile: $(VENV)/.serve, data, index).
RUN pip install . \
 && twotower data ml-100k --out /srv/data/ml-100k \
 && cp -r models/demo /srv/models \
 && TWOTOWER_MODEL_STORE=/srv/models TWOTOWER_DATA_DIR=/srv/data/ml-100k TWOTOWER_INDEX_STORE=/srv/index \
    twotower reindex

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin twotower
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=twotower:twotower /srv /srv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TWOTOWER_MODEL_STORE=/srv/models \
    TWOTOWER_INDEX_STORE=/srv/index \
    TWOTOWER_DATA_DIR=/srv/data/ml-100k
USER 10001:10001
WORKDIR /srv
VOLUME ["/srv/models", "/srv/index"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["twotower", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8000"]
