# The project image. docker-compose.yml runs it as the MLflow server, the
# Prefect server and the Prefect worker, so all three use the versions
# requirements.lock pins (the ones the tests ran against).
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

# git: DVC and MLflow's run tags read the repository the worker runs flows from.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app

WORKDIR /app

# Dependencies first, so editing the code does not reinstall them.
COPY requirements.lock ./
COPY docker/requirements-server.txt docker/requirements-server.txt
RUN pip install --requirement requirements.lock \
    && pip install --constraint requirements.lock --requirement docker/requirements-server.txt

COPY . .
RUN pip install --no-deps . \
    && chown -R app:app /app

USER app
ENV PREFECT_HOME=/home/app/.prefect
EXPOSE 5000 4200
CMD ["prefect", "worker", "start", "--pool", "local-process", "--type", "process"]
