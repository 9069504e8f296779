# OrochiDB — thin wrappers around cargo (see README.md).
CARGO ?= cargo
PROFILE_FLAGS ?=

.PHONY: run test unit slt fmt lint check bench build

build:
	$(CARGO) build $(PROFILE_FLAGS) -p orochi-coordinator -p orochi-worker

## Build and start the standalone server on 127.0.0.1:5432 with data in ./orochi-data.
run:
	$(CARGO) run --release -p orochi-coordinator -- --listen 127.0.0.1:5432 --data-dir ./orochi-data

## Everything: unit tests, the .slt suites over the wire (and against PostgreSQL), client tests.
test: unit slt

unit:
	$(CARGO) test $(PROFILE_FLAGS) --workspace --exclude orochi-sql-tests

slt: build
	$(CARGO) build $(PROFILE_FLAGS) -p orochi-sql-tests --tests
	./scripts/with-postgres.sh $(CARGO) test $(PROFILE_FLAGS) -p orochi-sql-tests --test slt --test psql
	OROCHI_PYTHON=$$(./scripts/python-env.sh) OROCHI_NODE_PATH=$$(./scripts/node-env.sh) \
		OROCHI_JDBC_JAR=$$(./scripts/java-env.sh) \
		./scripts/with-postgres.sh $(CARGO) test $(PROFILE_FLAGS) -p orochi-sql-tests --test drivers
	@# tests/security.rs makes its TLS certificates with the openssl CLI
	command -v openssl >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl)
	$(CARGO) test $(PROFILE_FLAGS) -p orochi-sql-tests --test clients --test columnar --test protocol --test security --test durability --test memory --test cluster
	python3 -c 'import yaml' 2>/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml)
	./scripts/check-deploy.sh
	./scripts/compatibility.sh $$(./scripts/python-env.sh) $$(./scripts/node-env.sh) $$(./scripts/java-env.sh)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --all-targets -- -D warnings

check: fmt lint test

## Benchmarks side by side with PostgreSQL; results go to docs/benchmarks.md.
bench:
	./bench/pgbench.sh
	./bench/cluster.sh
