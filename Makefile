# abtest: everything installs from this repository's own files.
#   make demo   build llama-server (cached), synthesise tiny-moe, A/B it, print the report
#   make test   the test suite (builds llama-server first if no cached build exists)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ABTEST := $(BIN)/abtest
RUNS   ?= 3

.PHONY: venv server demo test unit check clean

# The distribution was called `abtest` before it became `abtest-llm`: an older .venv loses that
# copy first (-qq: no "not installed" warning on a fresh one). `.[dev]` brings the setuptools
# that tests/integration/test_wheel_install.py builds the wheel with.
$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip uninstall -qq -y abtest
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

venv: $(BIN)/activate

# CPU build into ~/.cache/abtest (or $$ABTEST_CACHE); a no-op when a matching build is cached.
server: venv
	$(ABTEST) server install --if-missing --cpu

demo: server
	@mkdir -p evidence
	$(ABTEST) run --model tiny-moe --runs $(RUNS) --out evidence | tee .last-run
	$(ABTEST) report "$$(tail -n 1 .last-run)"

# pytest exits 5 when a selection holds no test: that is not a failure of the suite.
test: server
	$(BIN)/python -m pytest -q -p no:cacheprovider tests; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

unit: venv
	$(BIN)/python -m pytest -q tests/unit; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

check: venv
	$(BIN)/ruff check abtest tests benchmarks
	$(BIN)/mypy abtest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
