#!/usr/bin/env bash
# Prometheus artefacts: the alert rules parse, their unit tests pass, and a
# real /metrics scrape of the gateway passes `promtool check metrics`.
# Installs Debian's prometheus package (for promtool) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian package prometheus)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v promtool >/dev/null || { echo "promtool is not available and could not be installed" >&2; exit 1; }

promtool check rules deploy/prometheus/rules.yml
promtool test rules deploy/prometheus/rules_test.yml

cargo build --locked --quiet
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); admin=$(free_port)
SIGNGATE__LISTENER__ADDR="127.0.0.1:$port" \
SIGNGATE__ADMIN__ADDR="127.0.0.1:$admin" \
SIGNGATE__AUDIT__PATH="$work/audit.jsonl" \
SIGNGATE__STATE__DIR="$work/state" \
KWIKPAISA_API_KEY=pk_test_promcheck KWIKPAISA_SECRET_KEY=sk_test_promcheck_0123456789 \
  target/debug/signgate run --config gateway.toml 2>"$work/gateway.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT

python3 - "$port" "$admin" "$work/metrics.txt" <<'PY'
import sys, time, urllib.request, urllib.error
port, admin, out = sys.argv[1], sys.argv[2], sys.argv[3]
def call(url, data=None, method=None):
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
deadline = time.time() + 30
while True:
    try:
        if call(f"http://127.0.0.1:{admin}/healthz")[0] == 200:
            break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit("gateway did not come up")
    time.sleep(0.1)
# A few decisions so counters and histograms have samples (no network needed:
# the upstream call fails fast without DNS, which is itself a decision).
call(f"http://127.0.0.1:{port}/")
call(f"http://127.0.0.1:{port}/kwikpaisa/x", data=b"{bad", method="POST")
call(f"http://127.0.0.1:{port}/kwikpaisa/x", method="GET")
status, body = call(f"http://127.0.0.1:{admin}/metrics")
assert status == 200, status
open(out, "wb").write(body)
PY

promtool check metrics < "$work/metrics.txt"
echo "promtool: rules, rule tests and a live /metrics scrape all pass"
