# Two commands do everything on a fresh machine with only Python:  make demo  and  make test.
# The environment is created once and reused across clones (TensorFlow takes minutes to install);
# it is rebuilt when pyproject.toml changes. Set VENV=.venv to keep it inside the checkout.
PYTHON ?= python3
VENV ?= $(HOME)/.cache/weight-mapper/venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.weight-mapper-$(shell $(PYTHON) -c "import hashlib,os;print(hashlib.sha256(open('pyproject.toml','rb').read()+os.getcwd().encode()).hexdigest()[:16])")
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: env demo test test-quick lint bench clean

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.weight-mapper-* && touch $@

demo: env
	$(BIN)/mapper demo

# The whole suite on TensorFlow, then the tests marked `backends` on JAX and on PyTorch with TensorFlow made
# unimportable (tests/conftest.py): they prove that applying into those backends needs no TensorFlow.
test: env
	$(BIN)/python -m ruff check mapper tests benchmarks
	$(BIN)/python -m ruff format --check mapper tests benchmarks
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q
	KERAS_BACKEND=jax MAPPER_TEST_BLOCK_TF=1 $(BIN)/python -m pytest -q -m backends tests/backends
	KERAS_BACKEND=torch MAPPER_TEST_BLOCK_TF=1 $(BIN)/python -m pytest -q -m backends tests/backends

# The TensorFlow-free part of the suite, with TensorFlow made unimportable (tests/conftest.py): a quick check
# while working on rules, plans and reports, and proof that they need no TensorFlow. CI runs `make test`.
test-quick: env
	MAPPER_TEST_NO_TF=1 $(BIN)/python -m pytest -q

bench: env
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache
