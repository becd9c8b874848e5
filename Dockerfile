FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY splitcore splitcore
COPY edge_service edge_service
COPY cloud_service cloud_service
COPY partitioner partitioner
COPY edgesplit edgesplit
COPY models models
# Point PIP_EXTRA_INDEX_URL at a CPU-only torch index to keep the image small; plain PyPI works too.
ARG PIP_EXTRA_INDEX_URL=""
RUN pip install --no-cache-dir -e .
EXPOSE 8000 8001
ENTRYPOINT ["edgesplit"]
