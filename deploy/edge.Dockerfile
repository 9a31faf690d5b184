# Edge server image: the frozen trunk of one or more local Hugging Face models behind gRPC.
# Build: docker build -f deploy/edge.Dockerfile -t splitft-edge .
# The deploy issue adds a wheelhouse build for air-gapped sites, a CUDA base and a HEALTHCHECK.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 splitft
WORKDIR /opt/splitft
COPY pyproject.toml constraints.txt README.md ./
COPY proto ./proto
COPY device_client ./device_client
COPY edge_server ./edge_server
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt torch \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt .
USER splitft
EXPOSE 50051
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/venv/bin/splitft", "edge", "serve", "--host", "0.0.0.0", "--port", "50051"]
CMD ["--model-dir", "/models/model", "--insecure"]
