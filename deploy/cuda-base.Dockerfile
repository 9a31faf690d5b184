# A CUDA base for GPU edges: NVIDIA's CUDA runtime image plus Python 3 with venv.
#
#   docker build -f deploy/cuda-base.Dockerfile -t splitft-cuda-base .
#   docker build -f deploy/edge.Dockerfile --build-arg BASE_IMAGE=splitft-cuda-base -t splitft-edge:cuda .
#
# Torch's default (CUDA) wheels from PyPI bundle the CUDA and cuDNN libraries they use, so the plain
# python:3.11-slim base also runs on a GPU node; use this base where a site wants the system CUDA
# stack in the image. Either way the host provides the driver (NVIDIA Container Toolkit:
# `docker run --gpus all`; Kubernetes: the NVIDIA device plugin). Ubuntu 22.04 ships Python 3.10:
# build a wheelhouse for it with that Python if the edge image installs from one.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
