# The image the KubeRay manifests in scripts/cluster/ run (rayjob.yaml, raycronjob.yaml): this repository
# installed in /app through the lock, with a CUDA build of torch and Ray on PATH for `ray start`.
#
#   docker build -t ghcr.io/your-org/hf-batch-runner:0.1.0 .
#   docker build --build-arg FLASH_ATTN=1 -t ghcr.io/your-org/hf-batch-runner:0.1.0-flash .
#
# Two stages: the CUDA devel image builds the environment (flash-attn compiles against nvcc there), the
# CUDA runtime image receives it at the same paths. torch is not in the lock (its build is the
# machine's choice): TORCH_INDEX picks the CUDA wheels, TORCH the version the lock was tested with.
ARG CUDA_VERSION=12.8.1
ARG UBUNTU=ubuntu22.04

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU} AS build
ARG PYTHON=3.11
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG FLASH_ATTN=0
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Python 3.11, the version the lock (constraints.txt) was written with; Ubuntu 22.04 ships 3.10.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common ca-certificates git \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python${PYTHON} python${PYTHON}-venv python${PYTHON}-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python${PYTHON} -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# The package metadata and the lock first, so a code change does not reinstall every dependency.
COPY pyproject.toml constraints.txt README.md ./
COPY runner/__init__.py runner/__init__.py
COPY jobs/__init__.py jobs/__init__.py
RUN pip install "${TORCH}" --index-url "${TORCH_INDEX}" \
 && pip install -c constraints.txt -e .
# flash-attn is optional (model.attention: auto uses it when present): it builds for minutes.
RUN if [ "${FLASH_ATTN}" = "1" ]; then \
      pip install ninja packaging && MAX_JOBS=4 pip install --no-build-isolation -c constraints.txt -e '.[flash]'; \
    fi
COPY . .
RUN pip install --no-deps -c constraints.txt -e . && runner --help > /dev/null

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU}
ARG PYTHON=3.11
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common ca-certificates \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python${PYTHON} python${PYTHON}-venv \
 && apt-get purge -y software-properties-common && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
RUN runner --help > /dev/null && ray --version
CMD ["runner", "--help"]
