.PHONY: bootstrap serve test demo bench lint clean

VENV := .venv/bin

bootstrap:
	@scripts/bootstrap

serve: bootstrap
	$(VENV)/execbox serve

test: bootstrap
	$(VENV)/ruff check -q src tests benchmarks
	$(VENV)/mypy
	$(VENV)/python -m pytest -n 2 -q

demo: bootstrap
	$(VENV)/execbox run examples/hello.py
	$(VENV)/execbox run examples/hello.go
	$(VENV)/execbox run examples/hello.rs

bench: bootstrap
	$(VENV)/python benchmarks/bench_local.py
	$(VENV)/python benchmarks/bench_server.py
	$(VENV)/python benchmarks/bench_burst.py
	$(VENV)/python benchmarks/bench_docker.py
	$(VENV)/python benchmarks/bench_sandbox.py
	$(VENV)/python benchmarks/bench_run_code.py
	$(VENV)/python benchmarks/bench_providers.py

lint: bootstrap
	$(VENV)/ruff check src tests benchmarks
	$(VENV)/mypy

clean:
	rm -rf .venv .pytest_cache build *.egg-info
