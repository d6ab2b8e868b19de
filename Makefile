# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Torch first, pinned to the wheels this project is tested with; override for another CUDA/CPU build.
TORCH_PACKAGES ?= torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= saved/demo
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-slow lint install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PACKAGES)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "facenet-pytorch>=2.5"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m xcos train -tc configs/demo_synthetic.json --out $(DEMO_DIR)
	$(PY) -m xcos test -tc configs/demo_synthetic.json -p $(DEMO_DIR)/checkpoints/best.pth --out $(DEMO_DIR)/test

# Everything: ruff, then every test, slow ones included (as .ci/run does).
test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

# The edit-test loop: every test not marked slow (under a minute on 2 cores); no ruff.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Only the slow tests: training, compiling, spawned processes, browsers, real LFW, dlib.
test-slow: $(VENV)/.installed
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) saved data/synthfaces .pytest_cache
