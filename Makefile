# Horovod/MPI training template with a network preflight. `make` alone lists the targets.
# Variables given on the command line (make train EPOCHS=5) reach the scripts as environment.
SHELL := /bin/bash
MAKEFLAGS += --no-print-directory
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
N ?= 3
REPORT ?= preflight.json
export VENV REPORT

.PHONY: help setup preflight train evaluate data-files submit test test-scale test-unit lint bench \
        cluster-up cluster-down cluster-status cluster-exec cluster-fault slurm new-project clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'
	@echo "Variables: see README.md (HOSTS, INVENTORY, HOSTFILE, NP, EPOCHS, GPU=1, ...)"

setup: ## install system packages, the venv and Horovod (does nothing when done; TF=2.15: the old stack)
	@bash scripts/setup.sh

preflight: setup ## check every host, write hostfile and preflight.json (HOSTS=, INVENTORY=, INTERFACE=)
	@$(PY) -m preflight $(if $(HOSTS),--hosts "$(HOSTS)") $(if $(INVENTORY),--inventory "$(INVENTORY)") \
		$(if $(INTERFACE),--interface "$(INTERFACE)") --hostfile "$(or $(HOSTFILE),hostfile)" --report "$(REPORT)" $(PREFLIGHT_ARGS)

train: setup ## check config, data and model.py, preflight, then horovodrun template/train.py (HOSTFILE=, NP=, EPOCHS=, DATA=, RESUME=, ELASTIC=1, ...)
	@$(PY) -m preflight.train

evaluate: setup ## a run's saved model on its validation data (RUN=runs/<id>, CHECKPOINT=best|last)
	@$(PY) template/evaluate.py "$(RUN)" $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

data-files: setup ## write the template's in-memory data set as files for DATA= (DEST=, FORMAT=csv|tfrecord|images|imagenet, FILES=8)
	@$(PY) template/records.py "$(DEST)" --format $(or $(FORMAT),csv) --files $(or $(FILES),8)

submit: setup ## sbatch template/train.sbatch: preflight + train in a Slurm job (NODES=3, TASKS_PER_NODE=1, TIME=, EXCLUDE=)
	@$(PY) -m preflight.submit

test: setup ## run the whole test suite (unit and simulated cluster; needs root for the cluster)
	@$(PY) -m pytest $(PYTEST_ARGS)

test-scale: setup ## 100 simulated hosts: all kept, plain and --bandwidth, against horovodrun (about 5 min; root)
	@$(PY) -m pytest tests/scale -s $(PYTEST_ARGS)

test-unit: setup ## run the tests that need no cluster
	@$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup ## ruff over the code
	@$(VENV)/bin/ruff check .

bench: setup ## benchmarks on the simulated cluster; figures to bench/results/
	@$(PY) bench/run.py $(BENCH_ARGS)

cluster-up: ## simulated cluster of N hosts in network namespaces (N=3, SLURM=1 adds a real Slurm, CLUSTER_OPTS=)
	@PYTHONPATH=scripts python3 -m simcluster up $(N) $(if $(filter 1,$(SLURM)),--slurm) $(CLUSTER_OPTS)

cluster-down: ## remove the simulated cluster and everything it made
	@PYTHONPATH=scripts python3 -m simcluster down

cluster-status: ## hosts, addresses, sshd and faults of the simulated cluster
	@PYTHONPATH=scripts python3 -m simcluster status

cluster-exec: ## run CMD on simulated host HOST (make cluster-exec HOST=h1 CMD='make train')
	@PYTHONPATH=scripts python3 -m simcluster exec "$(HOST)" bash -c "$(CMD)"

cluster-fault: ## inject or remove a fault (HOST=h2 FAULT=firewall STATE=on|off VALUE=)
	@PYTHONPATH=scripts python3 -m simcluster fault "$(HOST)" "$(FAULT)" "$(or $(STATE),on)" $(VALUE)

slurm: ## run CMD on the simulated Slurm's login node h1 (make slurm CMD='srun -N3 hostname')
	@PYTHONPATH=scripts python3 -m simcluster slurm bash -c "$(CMD)"

new-project: ## copy the template into a new project (DEST=../my-project)
	@bash scripts/new_project.sh "$(DEST)"

clean: ## remove outputs (runs/, hostfile, preflight.json, caches); keeps the venv
	rm -rf runs $(wildcard bench/results) hostfile hostfile.healthy preflight.json .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
