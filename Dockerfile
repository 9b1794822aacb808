# syntax=docker/dockerfile:1
# Build stage: install into a virtualenv and build the artifacts, so the image serves at once.
FROM python:3.11-slim AS build
# torch's CPU wheels; the default index would bring a multi-gigabyte CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY models ./models
COPY optimize ./optimize
COPY server ./server
COPY monitoring ./monitoring
COPY benchmarks ./benchmarks
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
    && /opt/venv/bin/pip install -c constraints.txt . \
    && /opt/venv/bin/python -m optimize --out /opt/artifacts --quiet

# Run stage: the virtualenv and the artifacts, a non-root user, nothing else.
FROM python:3.11-slim
RUN groupadd --gid 10001 serve && useradd --create-home --uid 10001 --gid 10001 serve
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /opt/artifacts /app/artifacts
USER 10001:10001
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PIS_HOST=0.0.0.0 \
    PIS_ARTIFACTS=/app/artifacts \
    PIS_BUILD_ARTIFACTS_IF_MISSING=false
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz')"]
CMD ["python", "-m", "server"]
