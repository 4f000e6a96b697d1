# Scheduling with Prefect 3 on this machine: a local server, a process work pool and its worker, and
# the `nightly-retrain` deployment of prefect.yaml (or prefect-serve, which needs no pool). In order:
#   make prefect-server       (one terminal; the UI is http://127.0.0.1:4200)
#   make prefect-pool prefect-deploy
#   make prefect-worker       (another terminal)
#   make prefect-run          (a run now, instead of waiting for 03:00 UTC)
# Another server (e.g. the native stack's): set PREFECT_API_URL (and PREFECT_API_AUTH_STRING).
# Included by the Makefile.
PREFECT_VENV_BIN := $(if $(BIN),$(BIN),.venv/bin)
PREFECT_DEPS := $(if $(STAMP),$(STAMP),)
PREFECT_HOST ?= 127.0.0.1
PREFECT_PORT ?= 4200
PREFECT_API_URL ?= http://$(PREFECT_HOST):$(PREFECT_PORT)/api
# The same default pool as the native stack (scripts/stack_env.sh).
PREFECT_WORK_POOL ?= local-process
PREFECT_DEPLOYMENT := train-cnn-variants/nightly-retrain
# Profiles, logs and the local server's SQLite database stay in the project, not in ~/.prefect.
PREFECT_LOCAL_HOME := $(CURDIR)/.prefect
# DO_NOT_TRACK: no client telemetry.
PREFECT_CLIENT_ENV := PREFECT_HOME="$(PREFECT_LOCAL_HOME)" PREFECT_API_URL="$(PREFECT_API_URL)" DO_NOT_TRACK=true

.PHONY: prefect-server prefect-pool prefect-deploy prefect-worker prefect-serve prefect-run

prefect-server: $(PREFECT_DEPS)  ## Prefect server on 127.0.0.1:4200 in the foreground (state in .prefect/)
	PREFECT_HOME="$(PREFECT_LOCAL_HOME)" DO_NOT_TRACK=true PREFECT_SERVER_ANALYTICS_ENABLED=false \
		PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT=false \
		$(PREFECT_VENV_BIN)/prefect server start --host "$(PREFECT_HOST)" --port "$(PREFECT_PORT)"

prefect-pool: $(PREFECT_DEPS)  ## Create the process work pool $PREFECT_WORK_POOL (default local-process) if missing
	@$(PREFECT_CLIENT_ENV) $(PREFECT_VENV_BIN)/prefect work-pool inspect "$(PREFECT_WORK_POOL)" >/dev/null 2>&1 \
		&& echo "work pool $(PREFECT_WORK_POOL) exists" \
		|| $(PREFECT_CLIENT_ENV) $(PREFECT_VENV_BIN)/prefect work-pool create "$(PREFECT_WORK_POOL)" --type process

prefect-deploy: $(PREFECT_DEPS)  ## Register prefect.yaml's nightly-retrain deployment (cron 03:00 UTC) on the pool
	$(PREFECT_CLIENT_ENV) $(PREFECT_VENV_BIN)/prefect deploy --name nightly-retrain \
		--pool "$(PREFECT_WORK_POOL)" --no-prompt

prefect-worker: $(PREFECT_DEPS)  ## A process worker for the pool, in the foreground (runs the scheduled flows)
	$(PREFECT_CLIENT_ENV) $(PREFECT_VENV_BIN)/prefect worker start --pool "$(PREFECT_WORK_POOL)" --type process

prefect-serve: $(PREFECT_DEPS)  ## Instead of pool + deploy + worker: serve nightly-retrain from one process
	$(PREFECT_CLIENT_ENV) $(PREFECT_VENV_BIN)/python -m flows.serve

prefect-run: $(PREFECT_DEPS)  ## Start a nightly-retrain run now (a worker or prefect-serve executes it)
	$(PREFECT_CLIENT_ENV) $(PREFECT_VENV_BIN)/prefect deployment run "$(PREFECT_DEPLOYMENT)"
