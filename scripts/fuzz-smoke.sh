#!/usr/bin/env bash
# Smoke fuzz (CI): builds the cargo-fuzz targets in fuzz/ on the stable
# toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz use -Zsanitizer=address and
# the sanitizer-coverage flags), then runs each target for FUZZ_SECONDS
# (default 60) on a temporary copy of its corpus, so the repository's
# fuzz/corpus/ is never written. Fails if any target finds a crash, a
# property violation, a leak, a timeout or an out-of-memory; the input is
# left in fuzz/artifacts/<target>/ and its libFuzzer log is printed.
#
#   scripts/fuzz-smoke.sh [TARGET...]     # default: every target
#   FUZZ_SECONDS=600 scripts/fuzz-smoke.sh canonical
#   FUZZ_TARGET_DIR=/path                 # build directory (default fuzz/target)
#   FUZZ_PROFILE=release                  # optimised build for long runs (default: dev)
#
# The default build is cargo-fuzz's --dev profile with 16 codegen units: it
# is still instrumented and sanitized, runs fewer executions a second, and
# builds in a fraction of the release build's time (cargo-fuzz's release
# build forces one codegen unit per crate), which is what a CI smoke run wants.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds="${FUZZ_SECONDS:-60}"
target_dir="${FUZZ_TARGET_DIR:-fuzz/target}"
case "${FUZZ_PROFILE:-dev}" in
    dev) profile=(--dev --codegen-units 16) ;;
    release) profile=(--release) ;;
    *) echo "fuzz-smoke: FUZZ_PROFILE must be dev or release" >&2; exit 64 ;;
esac
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(canonical template config webhook)
fi
export RUSTC_BOOTSTRAP=1

if [[ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "fuzz-smoke: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

start=$SECONDS
# Build every target once (the runs below then start at once).
cargo fuzz build "${profile[@]}" --target-dir "$target_dir"
echo "fuzz-smoke: built in $((SECONDS - start)) s; ${seconds} s per target"

failed=()
# One target's run; its exit status and log are collected below.
run_one() {
    local t="$1"
    cargo fuzz run "${profile[@]}" --target-dir "$target_dir" "$t" "$work/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$work/$t.log" 2>&1
}

# Targets run FUZZ_JOBS at a time (default: one per core), each for the full
# FUZZ_SECONDS on its own core.
jobs="${FUZZ_JOBS:-$(nproc)}"
declare -A pid_of=()
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    if [[ -z "$(ls -A "$corpus" 2>/dev/null)" ]]; then
        echo "fuzz-smoke: $corpus is missing or empty" >&2
        exit 1
    fi
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    cp -R "$corpus/." "$work/$t/"
    while [[ "$(jobs -rp | wc -l)" -ge "$jobs" ]]; do
        wait -n || true
    done
    run_one "$t" &
    pid_of[$t]=$!
done
for t in "${targets[@]}"; do
    if wait "${pid_of[$t]}"; then
        # The final status line: "#N DONE cov: C ft: F corp: K/S exec/s: E rss: R".
        echo "fuzz-smoke: $t ok: $(grep -E '^#[0-9]+\s+DONE' "$work/$t.log" | tail -n 1)"
    else
        echo "fuzz-smoke: $t FAILED; the end of its libFuzzer log:" >&2
        tail -n 60 "$work/$t.log" >&2
        failed+=("$t")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz-smoke: failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz-smoke: ${#targets[@]} targets, no crash ($((SECONDS - start)) s)"
