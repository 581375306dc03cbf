# The two commands: `make demo` (install, then release the reference model) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install stack demo test test-engine test-others test-fast lint bench bench-all bench-serving bench-floor bench-image bench-webhook bench-rollout bench-base bench-swarm bench-warm lock clean

# Everything is pinned by constraints.txt (regenerate: make lock). torch 2.13.0 is the CPU
# wheel pip finds on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@command -v git >/dev/null || { echo "installing git"; apt-get update -qq && apt-get install -y -qq git; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Starts what is missing (dockerd, a local registry, the base image; with the services, a Prefect
# server and worker, an MLflow server and the webhook receiver) and says what it did.
stack: install
	$(BIN)/shipyard stack up

# The demo's release runs against the stack's Prefect server: watch it at http://127.0.0.1:4200.
demo: stack
	PREFECT_API_URL=http://127.0.0.1:4200/api SHIPYARD_MLFLOW_UI_URL=http://127.0.0.1:5001 \
	  $(BIN)/shipyard release examples/digits-sklearn
	$(BIN)/shipyard status digits-sklearn

# Tests start their own Prefect server; the UI test drives Debian's chromium.
test: lint install
	$(BIN)/shipyard stack up --no-services
	@command -v chromium >/dev/null || { echo "installing chromium"; apt-get update -qq && apt-get install -y -qq chromium; }
	$(MAKE) --no-print-directory -k -j2 -O test-engine test-others; halves=$$?; \
	  $(BIN)/pytest -m chaos && exit $$halves

# The two halves of `make test` that run side by side (-O prints each one's output whole when it
# ends). The tests that use the engine (tiers docker and e2e) run one after another, as they
# share the engine, the registry and the models' images; those that do not (unit, services) run
# in a second pytest beside them. The chaos test restarts the engine: alone, afterwards, whether
# the halves passed or not. `make test-engine` on its own needs `shipyard stack up` first.
test-engine: install
	$(BIN)/pytest -m "(docker or e2e) and not chaos"

test-others: install
	$(BIN)/pytest -m "(unit or services) and not chaos" -p no:cacheprovider

# The fast tier: no engine, no Prefect server, no browser (pytest -m unit); seconds, not minutes.
test-fast: install
	SHIPYARD_FUZZ_EXAMPLES=25 $(BIN)/pytest -m unit -q

# ruff, mypy --strict, and the import contracts in pyproject.toml (imports point one way).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every benchmark in turn; writes BENCHMARKS.md (machine, date, commit, each script's figures).
bench-all: install
	$(BIN)/shipyard stack up --no-services
	@command -v wrk >/dev/null || { echo "installing wrk"; apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python benchmarks/all.py

bench: install
	$(BIN)/python benchmarks/release_variants.py

bench-image: stack
	$(BIN)/python benchmarks/image_build.py

# A signed push of a new commit until the new version answers, split by stage.
bench-webhook: install
	$(BIN)/shipyard stack up --no-services
	$(BIN)/python benchmarks/webhook_to_serving.py

# The stack's base built twice from clean stack directories (mmdebstrap; cold and warm .deb
# cache): times, package count, and whether the two digests are equal.
bench-base: install
	$(BIN)/shipyard stack up --no-services
	$(BIN)/python benchmarks/base_digest.py

# The Docker target against a 3-node swarm (node containers), 3 replicas, the same load; the
# swarm endpoint's way in on 127.0.0.1 (front HAProxy) against one published on all addresses.
bench-swarm: install
	$(BIN)/shipyard stack up --no-services
	@command -v wrk >/dev/null || { echo "installing wrk"; apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python benchmarks/swarm_target.py

bench-rollout: install
	$(BIN)/shipyard stack up --no-services
	$(BIN)/python benchmarks/rollout_strategies.py

# `shipyard release` of unchanged inputs through the stack's engine server and in its own process.
bench-warm: install
	$(BIN)/python benchmarks/warm_release.py

bench-serving: install
	@command -v wrk >/dev/null || { echo "installing wrk"; apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python benchmarks/serving_vs_mlflow.py

bench-floor: install
	@command -v wrk >/dev/null || { echo "installing wrk"; apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python benchmarks/serving_floor.py

lock: install
	$(BIN)/pip freeze --exclude-editable | grep -v '^shipyard' > constraints.txt
	cd shipyard_serving && ../$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --no-header \
	  --output-file requirements.lock requirements.in
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --no-header --strip-extras \
	  --extra pytorch -c constraints.txt --output-file shipyard/stack/worker/requirements.lock pyproject.toml

clean:
	rm -rf .shipyard
