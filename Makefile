# One entry point for people and CI. Every target bootstraps .venv itself (docs/reference.md §1).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
GEN    := gen
PROTOS := $(shell find protos -name '*.proto')
ARGS   ?=

.PHONY: all run test unit integration integration-external e2e conformance lint bench gen clean lock

# The machine's own servers, for proving the code is not tied to the embedded ones (CI runs this).
EXTERNAL_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
EXTERNAL_REDIS_URL    ?= redis://127.0.0.1:6379/0
EXTERNAL_NATS_URL     ?= nats://127.0.0.1:4222

all: gen

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -c "import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'], 'aggregator_gen.pth').write_text(str(pathlib.Path('$(GEN)').resolve()) + '\n')"
	touch $@

# Generated code lives in gen/ only (never beside handwritten code) and is rebuilt, never edited.
$(GEN)/.stamp: $(VENV)/.installed $(PROTOS) tools/gen_protos.py
	$(PY) tools/gen_protos.py
	touch $@

gen: $(GEN)/.stamp

run: gen
	$(VENV)/bin/aggregator up $(ARGS)

test: lint
	$(PY) -m pytest -q -p no:cacheprovider tests

unit: gen
	$(PY) -m pytest -q tests/unit

integration: gen
	$(PY) -m pytest -q tests/integration

integration-external: gen
	AGGREGATOR_TEST_EXTERNAL_STORES=1 DATABASE_URL=$(EXTERNAL_DATABASE_URL) REDIS_URL=$(EXTERNAL_REDIS_URL) \
		NATS_URL=$(EXTERNAL_NATS_URL) $(PY) -m pytest -q -p no:cacheprovider tests/integration

e2e: gen
	$(PY) -m pytest -q tests/e2e

conformance: gen
	$(PY) -m pytest -q tests/conformance

lint: gen
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check --quiet services edge tests tools bench
	$(VENV)/bin/mypy services edge bench

bench: gen
	$(PY) -m bench.run

# Re-resolve every pinned version (needs the package registry); commit the result.
LOCK_VENV := .lock-venv

lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet ".[dev]"
	( $(LOCK_VENV)/bin/pip freeze --exclude-editable | grep -v '^aggregator'; \
	  $(LOCK_VENV)/bin/pip list --format=freeze | grep '^setuptools==' ) | sort -f > requirements.lock
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(GEN) $(VENV)
