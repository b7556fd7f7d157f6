# Two commands on a fresh clone: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet

.PHONY: run test lint format bench bench-submission bench-sieve bench-imap-mixed clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[test]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/provider init
	exec $(BIN)/provider serve

# Test processes (pytest-xdist); every test has its own ports, directories and database. The
# slowest tests are listed at the end, to keep the run short.
TEST_WORKERS ?= 2

test: $(VENV)/.installed-test lint
	$(BIN)/pytest -n $(TEST_WORKERS) --durations=30

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(VENV)/.installed-test
	$(BIN)/python bench/mailbox_list.py

# Submission against Postfix + Dovecot on this machine (needs root, postfix, dovecot-lmtpd).
bench-submission: $(VENV)/.installed-test
	$(BIN)/python bench/submission.py

# LMTP deliveries with a 20-rule Sieve script against none, on the same server (issue 13).
bench-sieve: $(VENV)/.installed-test
	$(BIN)/python bench/sieve_delivery.py --profile

# The mixed IMAP load of issue 14 against Dovecot, alternating (needs root and dovecot-imapd).
bench-imap-mixed: $(VENV)/.installed-test
	$(BIN)/python bench/imap_mixed.py --rounds 3 --duration 30

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
