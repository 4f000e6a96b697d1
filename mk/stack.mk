# The service stack without Docker: MLflow (basic auth), Prefect server and a
# process worker on loopback, backed by the local PostgreSQL. Secrets come from
# the environment or .env (see .env.example); scripts/stack_env.sh lists every
# setting. Included by the Makefile.
STACK_VENV_BIN := $(if $(BIN),$(BIN),.venv/bin)
STACK_DEPS := $(if $(STAMP),$(STAMP),)

.PHONY: stack-up stack-down stack-purge

stack-up: $(STACK_DEPS)  ## Start MLflow, Prefect server and worker on 127.0.0.1 (needs PostgreSQL)
	STACK_BIN_DIR="$(abspath $(STACK_VENV_BIN))" bash scripts/stack_up.sh

stack-down:  ## Stop the native stack (data kept)
	STACK_BIN_DIR="$(abspath $(STACK_VENV_BIN))" bash scripts/stack_down.sh

stack-purge:  ## Stop the native stack, drop its databases and delete .stack/
	STACK_BIN_DIR="$(abspath $(STACK_VENV_BIN))" bash scripts/stack_down.sh --purge
