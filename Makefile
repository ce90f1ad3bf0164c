.PHONY: demo test bench e2e

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

bench:
	bash scripts/bootstrap.sh && uv run --frozen python bench/run_all.py
