# Common tasks. `just --list` shows them.

# Crawl the built-in sample site with the one-process embedded cluster.
demo:
    cargo run -p crawlctl -- demo

# Start a local cluster of separate processes on the local engines.
up workers="2":
    scripts/local-cluster {{workers}}

# The whole test suite (starts stopped engines first).
test *args:
    scripts/test {{args}}

# Formatting, lints and the dependency policy, as CI checks them.
lint *args:
    scripts/lint {{args}}

# Benchmarks: they print figures and ratios against a peer measured in the same run.
bench:
    cargo build --release --workspace --bins
    cd bench/spider-peer && cargo build --release
    cd bench/spider-peer-lean && cargo build --release
    cargo bench -p cluster-tests --bench pipeline
    cargo bench -p cluster-tests --bench takeover
    cargo bench -p cluster-tests --bench gateway_memory
    cargo bench -p cluster-tests --bench cache_hits
    cargo bench -p cluster-tests --bench polite_hosts
    cargo bench -p cluster-tests --bench big_crawl
    cargo bench -p file-sync --bench sync_bench

# The chaos soak: 1,000 jobs while services are killed every 5 s and each
# engine restarts once (docs/chaos.md). The services' logs go to target/chaos-soak.log.
chaos *args:
    cargo build --release --workspace --bins
    target/release/chaos-soak {{args}} 2> target/chaos-soak.log

# Coverage-guided fuzzing of the frame parser, URL normaliser and link
# extractor (cargo-afl); 10 million executions each unless told otherwise.
fuzz execs="10000000" *targets:
    scripts/fuzz {{execs}} {{targets}}

# The compose cluster for real, with podman (builds the images).
compose-test:
    scripts/compose-test

# Everything a change must pass (the test script runs the lints too).
verify: test
