# adc-operator — every entry point a developer or CI needs.
# The README names exactly two set-up commands: `make demo` and `make test`.

SHELL := /bin/bash
CARGO ?= cargo
# Two cores on the reference machine: keep test parallelism sane.
TEST_THREADS ?= 2
# helm, built from Go modules by `make envtest` into the version-keyed cache.
HELM ?= $(shell hack/envtest/build.sh --dir)/helm
CHART := charts/adc-operator

.PHONY: all build envtest crds crds-check helm-lint lint fmt fmt-check clippy test test-rust test-fidelity soak bench bench-emulator bench-engine bench-convergence demo cluster-up cluster-down clean toolchain image-check image-tools image-demo

all: build

## toolchain: make sure rustfmt and clippy are installed (no-op when present)
toolchain:
	@command -v rustup >/dev/null && { rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt; } || true
	@command -v rustup >/dev/null && { rustup component list --installed | grep -q '^clippy' || rustup component add clippy; } || true

## envtest: build etcd, kube-apiserver, kubectl and helm from Go modules into the version-keyed cache
envtest:
	@hack/envtest/build.sh

## build: build every binary of the workspace
build:
	$(CARGO) build --workspace --all-targets

## crds: regenerate the CustomResourceDefinitions in crds/ from the Rust types in src/api, and
## copy them into the Helm chart's crds/
crds:
	$(CARGO) build --quiet --bin adc-operator
	rm -f crds/*.yaml
	$(CARGO) run --quiet --bin adc-operator -- crdgen --out crds
	mkdir -p $(CHART)/crds
	rm -f $(CHART)/crds/*.yaml
	cp crds/*.yaml $(CHART)/crds/

## crds-check: fail when crds/ differs from what the Rust types generate, or the chart's copy
## differs from crds/
crds-check:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(CARGO) run --quiet --bin adc-operator -- crdgen --out "$$tmp" && \
	if ! diff -ru crds "$$tmp"; then echo "crds/ is out of date: run make crds" >&2; exit 1; fi && \
	if ! diff -ru crds $(CHART)/crds; then echo "$(CHART)/crds differs from crds/: run make crds" >&2; exit 1; fi

## helm-lint: lint the Helm chart (values schema, templates) with the helm of `make envtest`
helm-lint: envtest
	$(HELM) lint $(CHART)

## lint: generated files up to date, the Helm chart, formatting and clippy, warnings are errors
lint: toolchain crds-check helm-lint fmt-check clippy image-check

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## test: every test — unit, emulator, integration against the real control plane, and the
## emulator's fidelity test with Google's own Python client
test: test-rust test-fidelity

test-rust: envtest toolchain image-tools
	# No backtraces: a failing test's panic message is then the last thing it prints, where
	# a CI excerpt of the output (head and tail) shows it.
	RUST_BACKTRACE=0 $(CARGO) test --workspace -- --test-threads=$(TEST_THREADS)

## test-fidelity: google-api-python-client against the emulator (sets up .venv by itself)
test-fidelity:
	$(CARGO) build -p gce-emulator
	GCE_EMULATOR_BIN=$${CARGO_TARGET_DIR:-$(CURDIR)/target}/debug/gce-emulator emulator/tests/fidelity/run.sh

## soak: the reliability suite's long runs (tests/it/reliability.rs, `soak_*`): bigger fleets,
## more operator kills, the emulator's gcp latency profile; bounded to ten minutes
SOAK_TIMEOUT ?= 600
soak: envtest toolchain
	$(CARGO) build --tests -p adc-operator -p gce-emulator
	timeout --foreground $(SOAK_TIMEOUT) $(CARGO) test --test it -- --ignored --test-threads=1 --nocapture reliability::soak_

## bench: every benchmark (measured figures go into the READMEs). BENCH_QUICK=1 runs only a
## two-minute convergence benchmark that records nothing.
ifeq ($(BENCH_QUICK),1)
bench: bench-convergence
else
bench: bench-emulator bench-engine bench-convergence
endif

## bench-convergence: a fleet on kube-apiserver + the operator binary + the emulator's gcp
## profile, every scenario in every dispatch mode (bench/README.md: BENCH_N, BENCH_MODES,
## BENCH_SCALE, BENCH_PER_OBJECT_DIVISOR, BENCH_QUICK, BENCH_SUITES, BENCH_SMALL_N, BENCH_SMALL_SCALE,
## BENCH_SEED, BENCH_POOL_N, BENCH_POOL_MINUTES, BENCH_SHARD_N, BENCH_SHARD_CLOUDS, BENCH_SHARD_REPLICAS)
bench-convergence: envtest
	$(CARGO) build --release -p adc-operator -p gce-emulator -p adc-bench --bins
	$${CARGO_TARGET_DIR:-$(CURDIR)/target}/release/adc-bench

## bench-engine: the GCP engine's dispatch modes against the emulator's gcp profile, in process
## (bench/src/bin/engine_modes.rs: ENGINE_BENCH_N, ENGINE_BENCH_SCALE, ENGINE_BENCH_MODES)
bench-engine:
	$(CARGO) build --release -p gce-emulator --bin gce-emulator
	$(CARGO) run --release -p adc-bench --bin engine-modes

## bench-emulator: emulator throughput and memory (release build)
bench-emulator:
	$(CARGO) bench -p gce-emulator --bench throughput

## demo: the main job on a local control plane (DEMO_KEEP=1 keeps it running)
demo: envtest
	@hack/demo.sh

## image-check: the Dockerfile's build stage builds, without a container engine: what its COPY
## lines copy is a workspace cargo loads, and its RUN line makes the binary the final stage copies
image-check:
	hack/image-check.sh

## image-tools: buildah (assembles the image), podman and runc (run it), from apt when missing
image-tools:
	@missing=""; for tool in buildah podman runc; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "image-tools: installing$$missing"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q$$missing || \
	    { $$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q$$missing; }; \
	fi

## image-demo: the final stage assembled from scratch with buildah from the image-check binary
## (hack/image-assemble.sh), then `make demo` with the operator run from inside that image
image-demo: envtest image-tools
	hack/image-assemble.sh
	ADC_OPERATOR_CMD="hack/image-assemble.sh exec" hack/demo.sh

## cluster-up / cluster-down: a local control plane for exploring by hand
cluster-up: envtest
	@hack/local-cluster.sh up

cluster-down:
	@hack/local-cluster.sh down

clean:
	$(CARGO) clean
