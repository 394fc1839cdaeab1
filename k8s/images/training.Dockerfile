# The training image: the same pipeline code on a CUDA base, Keras 3 on JAX
# (KERAS_BACKEND=jax; the code is plain Keras, so TensorFlow runs it unchanged on CPU).
#   docker build -f k8s/images/training.Dockerfile -t ghcr.io/labelloop/labelloop-training:0.1.0 .
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 KERAS_BACKEND=jax \
    PIP_NO_CACHE_DIR=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /opt/labelloop
COPY requirements.lock pyproject.toml README.md ./
# The locked stack (TensorFlow stays for CPU fallback and evaluation), plus JAX with CUDA
# (the lock already holds the S3 drivers for DVC and shared storage).
RUN pip install -r requirements.lock "jax[cuda12]"
COPY loop ./loop
COPY labeling ./labeling
COPY serving ./serving
COPY pipelines ./pipelines
RUN pip install --no-deps . && python -m compileall -q /opt/venv /opt/labelloop

RUN useradd --create-home --uid 1001 trainer
USER 1001
WORKDIR /work
ENTRYPOINT ["python", "-m", "pipelines.job"]
