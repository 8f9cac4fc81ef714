# ingest: `make demo` runs the main job on the embedded database; `make test` passes the tests.
# Both create .venv and install what they need when it is missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
INGEST := $(BIN)/ingest --config examples/demo.yaml

.PHONY: install demo test bench lint clean system-deps node-deps

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian packages the test suite needs (OpenLDAP's slapd for the LDAP connector; Chromium renders
# the access-review report in its browser test).
system-deps:
	bash scripts/install-slapd.sh
	bash scripts/install-chromium.sh

demo: install
	@echo "== day 1: first snapshot of the demo organisation"
	$(INGEST) run demo
	@echo "== day 2: the organisation changed overnight (the demo advances one day per run)"
	$(INGEST) run demo
	@echo "== what changed between the two snapshots"
	$(INGEST) diff demo --limit 5
	@echo "== who has admin access right now (ingest.access)"
	$(INGEST) sql "SELECT username, display_name, entitlement_label, resource_label FROM ingest.access WHERE connector = 'demo' AND entitlement_label ILIKE '%admin%' ORDER BY username LIMIT 10"

# npm packages the tests use (tests/node/package.json): vendor API descriptions such as @okta/openapi.
NODE_STAMP := tests/node/node_modules/.installed
node-deps: $(NODE_STAMP)

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	command -v npm >/dev/null || (apt-get update && apt-get install -y --no-install-recommends nodejs npm)
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

test: install system-deps node-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=20 -n $(or $(TEST_WORKERS),2) --dist loadfile

bench: install
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/scim_bench.py $(if $(BENCH_LARGE),--large)
	$(BIN)/python bench/micro.py
	$(BIN)/python bench/resume.py --users $(or $(BENCH_RESUME_USERS),20000)
	$(BIN)/python bench/idp.py
	$(BIN)/python bench/cloud.py
	$(BIN)/python bench/people.py --scale $(or $(BENCH_PEOPLE_SCALE),1)

lint: install
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check ingest connectors tests bench

clean:
	rm -rf $(VENV) .ingest examples/.ingest examples/.pretend
