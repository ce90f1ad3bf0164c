.PHONY: demo test bench e2e

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

bench:
	bash scripts/bootstrap.sh && uv run --frozen python bench/run_all.py

# The end-to-end suite on a kind cluster (needs Docker and kind; skips, saying why, without).
# helm and kubectl: .tools/bin (scripts/tools.sh fetches them when the suite can run), or PATH.
e2e:
	bash scripts/bootstrap.sh
	if [ -f scripts/tools.sh ] && command -v kind >/dev/null && docker info >/dev/null 2>&1; then \
		bash scripts/tools.sh; fi
	export PATH="$$HOME/.local/bin:$$PATH"; uv run --frozen pytest e2e -v -rs $(E2E_ARGS)
