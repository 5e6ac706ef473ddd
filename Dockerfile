# The recstream image: the worker and the reader run from it (see docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY recstream recstream
COPY models models
COPY streams streams
COPY serving serving
RUN pip install --no-cache-dir .
ENTRYPOINT ["recstream"]
