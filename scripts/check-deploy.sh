#!/usr/bin/env bash
# Checks of the deployment artefacts (deploy/, certs/) that need more than
# `cargo test`. Installs what it needs, once, and only if it is missing:
#   systemd-analyze      (Debian package systemd; works without systemd as PID 1)
#   kubernetes-validate  (PyPI, in a venv; ships the Kubernetes JSON schemas, no network at check time)
# Then:
#   1. builds the signgate binary and runs `signgate check --config-only` on
#      every shipped config (the files they name live on the target hosts, not
#      here): deploy/systemd/gateway.toml (with the unit's SIGNGATE__ overrides,
#      %d expanded), deploy/container/gateway.toml and each ConfigMap's gateway.toml;
#   2. `systemd-analyze verify` on deploy/systemd/signgate.service (any warning
#      fails) and `systemd-analyze security --offline` under a threshold;
#   3. every document under deploy/kubernetes against the Kubernetes schemas
#      (strict: unknown fields fail) for the oldest supported and a current version;
#   4. the Rust tests of the artefacts: the deploy and certs modules of the
#      integration tests (tests/integration/deploy.rs, certs.rs).
# The container image cannot be built here (no container engine): the deploy tests
# check the Dockerfile's shape and its default config instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# Oldest Kubernetes the manifests support (native sidecars) and the newest schema shipped.
K8S_VERSIONS=(1.29.0 1.37.0)
KUBERNETES_VALIDATE_VERSION=1.37.0
# systemd-analyze security: 0 (locked down) … 10 (exposed). The unit scores about 1.5;
# what is left is the network access a gateway needs.
SYSTEMD_EXPOSURE_MAX=2.0

TOOLS_DIR="${SIGNGATE_TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/signgate-tools}"
VENV="$TOOLS_DIR/deploy-venv"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

say() { printf '\n== %s\n' "$*"; }

apt_updated=false
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "check-deploy: need root to apt-get install $*" >&2
        exit 1
    fi
    if ! $apt_updated; then
        apt-get update -qq
        apt_updated=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- tools -------------------------------------------------------------------
if ! command -v systemd-analyze >/dev/null; then
    say "installing systemd (for systemd-analyze)"
    apt_install systemd
fi
if [ ! -x "$VENV/bin/kubernetes-validate" ] ||
    [ "$("$VENV/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        apt_install python3 python3-venv
    fi
    rm -rf "$VENV"
    mkdir -p "$TOOLS_DIR"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

say "building signgate"
cargo build --locked --bin signgate
BIN="${CARGO_TARGET_DIR:-target}/debug/signgate"
BIN="$(cd "$(dirname "$BIN")" && pwd)/signgate"

# --- 1. every shipped config validates with the binary --------------------------
say "signgate check: shipped configs"
# The systemd example, with the overrides the unit sets (%d = the credentials directory).
unit_env=()
while IFS= read -r line; do
    unit_env+=("${line//%d//run/credentials/signgate.service}")
done < <(sed -n 's/^Environment=\(SIGNGATE__.*\)$/\1/p' deploy/systemd/signgate.service)
# A clean environment: a SIGNGATE__* variable of the caller must not change the verdict.
clean=(env -i "PATH=$PATH" "HOME=${HOME:-/tmp}")
"${clean[@]}" "${unit_env[@]}" "$BIN" check --config-only --config deploy/systemd/gateway.toml
"${clean[@]}" "$BIN" check --config-only --config deploy/container/gateway.toml
# Each ConfigMap's gateway.toml, extracted with the venv's PyYAML.
"$VENV/bin/python" - "$WORK" deploy/kubernetes/*.yaml <<'PY'
import pathlib, sys, yaml
out = pathlib.Path(sys.argv[1])
n = 0
for f in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(f)):
        if doc and doc.get("kind") == "ConfigMap" and "gateway.toml" in (doc.get("data") or {}):
            name = pathlib.Path(f).stem + "-" + doc["metadata"]["name"] + ".toml"
            (out / name).write_text(doc["data"]["gateway.toml"])
            n += 1
if n == 0:
    sys.exit("no ConfigMap with a gateway.toml under deploy/kubernetes")
PY
for f in "$WORK"/*.toml; do
    "${clean[@]}" "$BIN" check --config-only --config "$f"
done

# --- 2. systemd ----------------------------------------------------------------------
say "systemd-analyze verify deploy/systemd/signgate.service"
# verify insists that ExecStart's binary exists: point the copy at the one just built.
mkdir -p "$WORK/unit"
sed "s#/usr/local/bin/signgate#$BIN#g" deploy/systemd/signgate.service >"$WORK/unit/signgate.service"
if ! systemd-analyze verify --man=no "$WORK/unit/signgate.service" >"$WORK/verify.log" 2>&1 || [ -s "$WORK/verify.log" ]; then
    cat "$WORK/verify.log" >&2
    echo "check-deploy: systemd-analyze verify reported problems (warnings count)" >&2
    exit 1
fi
echo "ok"
say "systemd-analyze security --offline (at most $SYSTEMD_EXPOSURE_MAX)"
systemd-analyze security --offline=yes --no-pager "$WORK/unit/signgate.service" >"$WORK/security.log" 2>&1 || true
exposure="$(sed -n 's/.*Overall exposure level for signgate.service: \([0-9.]*\).*/\1/p' "$WORK/security.log")"
if [ -z "$exposure" ]; then
    cat "$WORK/security.log" >&2
    echo "check-deploy: no exposure level from systemd-analyze security" >&2
    exit 1
fi
echo "exposure $exposure"
if ! awk -v e="$exposure" -v max="$SYSTEMD_EXPOSURE_MAX" 'BEGIN { exit !(e <= max) }'; then
    grep '✗' "$WORK/security.log" >&2 || true
    echo "check-deploy: exposure $exposure is above the threshold" >&2
    exit 1
fi

# --- 3. Kubernetes schemas ---------------------------------------------------------
for v in "${K8S_VERSIONS[@]}"; do
    say "kubernetes-validate --strict -k $v"
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" deploy/kubernetes/*.yaml
    echo "ok"
done

# --- 4. Rust tests of the artefacts ------------------------------------------------------
say "cargo test --test integration -- deploy:: certs::"
cargo test --locked --test integration -- deploy:: certs::
