# Two entry points: `make demo` (install the package, run the quick study) and `make test` (install it with the
# test extras, run the tests). Both create .venv and install what they need into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= -n 2 --dist loadfile
# The PyTorch wheels that lie on this project's machines (see README, "Installing"); elsewhere pip fetches them.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test study clean

# Two stamps: the base install is all `make demo` and `make study` need; the test extras (Ray, MLflow, ONNX, the
# web app, the linters) come on top for `make test`. Each is redone when pyproject.toml changes. The base goes in
# with uv, which unpacks PyTorch's 4 GB of wheels in parallel (docs/benchmarks.md: 18 s here, pip 46 s); where uv
# cannot be installed, pip does it. Neither byte-compiles PyTorch's many modules: Python compiles the few a run imports.
$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	if $(BIN)/pip install --quiet uv; then \
		$(BIN)/uv pip install --quiet --python $(BIN)/python $(TORCH_PINS) -e .; \
	else \
		echo "uv could not be installed: pip installs the base instead"; \
		$(BIN)/pip install --quiet --no-compile $(TORCH_PINS) && $(BIN)/pip install --quiet -e .; \
	fi
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.test

demo: $(VENV)/.base
	$(BIN)/cifarlab study --quick

study: $(VENV)/.base
	$(BIN)/cifarlab study

# Lint, format check and type check first (settings in pyproject.toml), then the tests.
# The tests run in 2 processes (pytest-xdist; one test file per process at a time, so a file's shared fixtures are
# built once); PYTEST_WORKERS= runs them in this process. PYTEST_ARGS passes options on, e.g. make test PYTEST_ARGS="-m 'not slow'" (markers: see docs/testing.md)
test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
