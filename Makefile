# Everything a fresh machine needs: `make test` and `make demo` build the venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check -q
# Every extra, so the whole suite runs (the embedded guard alone needs none).
EXTRAS := dev,redis,postgres,signing,watch,charts,serve

.PHONY: venv test pytest rego-test demo bench bench-scripts clean

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# opa-golib-python-bindings 0.4.4 declares Python >= 3.14 but runs on 3.11: only it is
	# installed ignoring Requires-Python (doing that for everything would pick releases
	# that have no wheel for this Python, e.g. contourpy 1.4 under matplotlib).
	$(PIP_INSTALL) --ignore-requires-python --no-deps opa-golib-python-bindings==0.4.4
	$(PIP_INSTALL) -e '.[$(EXTRAS)]'
	touch $@

# pytest, then the Rego tests: a real `opa test` when one exists, else the
# embedded-OPA runner (test support; see README).
test: venv
	$(BIN)/pytest -q
	@$(MAKE) --no-print-directory rego-test

# Every test passes and every line is covered (--threshold 100: exit 2 below it).
rego-test: venv
	@OPA="$${OPA_BIN:-$$(command -v opa || true)}"; \
	if [ -z "$$OPA" ]; then echo "rego: no opa binary; chio-budget test-rego (embedded OPA)"; OPA="$(BIN)/chio-budget test-rego"; \
	else OPA="$$OPA test"; fi; \
	echo "rego: $$OPA rego/ -v"; $$OPA rego/ -v && $$OPA rego/ --threshold 100 >/dev/null && echo "rego: coverage 100%"

demo: venv
	$(BIN)/chio-budget demo

# Every performance target side by side in one run (about 3 minutes; never part of `make test`):
# prints the table, writes bench/results.json, docs/performance.png and the results section of
# docs/performance.md (docs/performance.md says how to read it).
bench: venv
	$(BIN)/python bench/perf.py --write-doc

# The older single-topic scripts (each reports; none fails on a number).
bench-scripts: venv
	@for b in run engines ledgers replicas chain shadow_beside gil serve; do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis
