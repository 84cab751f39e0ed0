# The README's two commands. Both create .venv when missing and install the project into it.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test install clean reproduce

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/upsample image assets/sample.png -o out/demo --scale 3 --overwrite

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/python -m pytest -n 2 tests

clean:
	rm -rf out

# Retrain one shipped model from scratch and package it: make reproduce MODEL=espcn-x3
# It trains the exact resolved config shipped beside the weights (else configs/MODEL.toml), after
# the earlier stages its train.init names (runs/STAGE/... from configs/STAGE.toml): tools/reproduce.py.
reproduce: $(STAMP)
	@test -n "$(MODEL)" || (echo "usage: make reproduce MODEL=espcn-x3" >&2; exit 2)
	$(VENV)/bin/python tools/reproduce.py $(MODEL)
