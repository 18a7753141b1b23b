# hntseg — set-up and everyday commands. `make demo` and `make test` install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1: nnU-Net 2.8 imports torchvision during trainer
# lookup, and the only torchvision that loads beside a torch here is this pair
# (see README "Why this torch").
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed
SPEC   := $(VENV)/.torch-spec

.PHONY: install demo test lint format bench clean FORCE

install: $(STAMP)

# the torch pair asked for; rewritten (so the stamp is out of date) only when TORCH changes
$(SPEC): FORCE
	@mkdir -p $(VENV)
	@if [ "$$(cat $@ 2>/dev/null)" != "$(TORCH)" ]; then echo "$(TORCH)" > $@; fi

$(STAMP): pyproject.toml Makefile $(SPEC)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: install
	$(BIN)/hntseg demo --out demo_out

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	for b in benchmarks/[!_]*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
