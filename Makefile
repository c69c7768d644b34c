PY ?= .venv/bin/python

.PHONY: install test lint bench verify-e5 serve

install:
	python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip install -q -e '.[test]'

test:
	$(PY) -m pytest -q tests

lint:
	$(PY) -m ruff check madx serving tests benchmarks scripts loadtests

verify-e5:
	$(PY) -m madx.cli verify-e5

bench:
	$(PY) benchmarks/bench_dtype.py --split test --repeats 5 --per-lang 64 --json docs/bench_dtype_cpu.json
	$(PY) benchmarks/bench_serving.py --requests 384 --concurrency 64 --repeats 3 --http-seconds 40 --http-users 48 --json docs/bench_serving_cpu.json
	$(PY) benchmarks/bench_serving.py --requests 384 --concurrency 64 --repeats 3 --http-seconds 40 --http-users 48 --backbone-dtype fp32 --adapter-dtype fp32 --json docs/bench_serving_cpu_fp32.json
	$(PY) benchmarks/bench_stacks.py --batch 32 --seq 128 --stacks 16 --repeats 7 --json docs/bench_stacks_cpu.json
	$(PY) benchmarks/bench_routes.py --repeats 2 --json docs/bench_routes_cpu.json

serve:
	.venv/bin/madx-serve
