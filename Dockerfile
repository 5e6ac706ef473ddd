# syntax=docker/dockerfile:1
# The recstream image: the worker and the reader run from it (docker-compose.yml, deploy/k8s/).
# Two stages. `build` has a C++ compiler and turns every dependency, at its version in requirements.lock,
# plus the project itself into wheels: hnswlib publishes only a source archive for CPython 3.11 and
# python:3.11-slim has no compiler. `runtime` installs those wheels alone (no index, no compiler) and
# runs as an unprivileged user. tests/test_docker.py checks this file (nobody here runs Docker).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
# hnswlib compiles with -march=native unless told not to: a wheel for the build machine's CPU would die
# with SIGILL on an older one
ENV HNSWLIB_NO_NATIVE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml requirements.lock README.md LICENSE ./
COPY recstream recstream
COPY models models
COPY streams streams
COPY serving serving
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --constraint requirements.lock --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
# NUMBA_CACHE_DIR: the compiled FTRL loop (models/ftrl_step.py) is cached where the non-root user can write; the
# installed package's own folder is root's
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/tmp/numba
# the wheels are mounted for the install only, so they take no layer of the image
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels recstream
# /app is the home and working directory; faust's (empty) data folder goes to /tmp; /models is the default model volume
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /app recstream \
 && install -d -o recstream -g recstream /models
WORKDIR /app
USER 10001:10001
EXPOSE 8080 9101
ENTRYPOINT ["recstream"]
CMD ["--help"]
