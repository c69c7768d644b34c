PY ?= .venv/bin/python

.PHONY: install test lint bench verify-e5 serve

install:
	python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip install -q -e '.[test]'

test:
	$(PY) -m pytest -q tests

lint:
	$(PY) -m ruff check madx tests benchmarks

verify-e5:
	$(PY) -m madx.cli verify-e5

bench:
	$(PY) benchmarks/bench_stacks.py --batch 32 --seq 128 --stacks 16 --repeats 7

serve:
	@echo "serving/ (Ray Serve app) is issue #4 and not built yet; 'make bench' runs the embedded backbone" && exit 2
