# The two commands of the README: `make run` and `make test`.
# Both create the virtual environment on first use (Python 3.11+ is all
# a fresh machine needs) and reinstall when setup.cfg changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= ./owncdn-data
LISTEN ?= tcp:8080:interface=127.0.0.1

.PHONY: run test venv bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

venv: $(VENV)/.installed

run: venv
	$(BIN)/twistd -n --pidfile= owncdn --data-dir $(DATA_DIR) --listen $(LISTEN)

# The AWS SDK for JavaScript, for the S3 client tests (skipped without npm).
tests/js/node_modules/.installed: tests/js/package-lock.json
	if command -v npm >/dev/null; then cd tests/js && npm ci --silent --no-audit --no-fund && touch node_modules/.installed; fi

test: venv tests/js/node_modules/.installed
	$(BIN)/python -m twisted.trial $(TRIAL_ARGS) tests

clean:
	rm -rf $(VENV) _trial_temp build dist *.egg-info
