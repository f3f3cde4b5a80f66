# Two commands do all the set-up:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
PRESET ?= demo
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: run test venv install install-dev lint generate prepare pipeline serve verify upload \
        bench-pipeline bench-serve reliability clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PIP) install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## The main job: generate demo data if data/ lacks the raw files, run the pipeline,
## start the three services, verify them, and keep serving until Ctrl-C.
run: install
	$(PY) -m musicrec serve --check-ports
	$(PY) -m musicrec pipeline --generate $(PRESET)
	$(PY) -m musicrec serve --verify

## The whole test suite.
test: install-dev
	$(PY) -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check musicrec tests bench *.py
	$(VENV)/bin/mypy

generate: install
	$(PY) -m musicrec generate --preset $(PRESET) --out data $(if $(filter 1 yes true,$(FORCE)),--force)

prepare: install
	$(PY) -m musicrec prepare

pipeline: install
	$(PY) -m musicrec pipeline --generate $(PRESET)

serve: install
	$(PY) -m musicrec serve

verify: install
	$(PY) verify_service.py

upload: install
	$(PY) -m musicrec upload

## Benchmarks (docs/benchmarks.md): BENCH_PRESET=full10 (routine, default) or full;
## data and artifacts go to /tmp/musicrec-bench/<preset>, tables to bench/results/.
BENCH_PRESET ?= full10
BENCH_ARGS ?=

bench-pipeline: install
	$(PY) bench/bench_pipeline.py --preset $(BENCH_PRESET) $(BENCH_ARGS)

bench-serve: install-dev
	$(PY) bench/bench_serve.py --preset $(BENCH_PRESET) $(BENCH_ARGS)

## The long reliability suite (~3 min) and its table (bench/results/reliability.md).
reliability: install-dev
	$(PY) bench/reliability.py

clean:
	rm -rf recsys/data recsys/model recsys/recommendations recsys/pictures recsys/cache recsys/metrics.json recsys/run.json
