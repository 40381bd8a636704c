#!/usr/bin/env bash
# The one test command (README, CI): everything the tests need is installed
# here, then every test runs. Fails loudly if a prerequisite cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked --all-targets "$@"
