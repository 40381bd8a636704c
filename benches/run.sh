#!/usr/bin/env bash
# Load benchmark: signgate (signing) against nginx as a plain reverse proxy,
# nginx+njs doing the same KwikPaisa signing, the upstream directly, and
# signgate + Redis ([fleet]: one limit script per request) against signgate.
#
#   ./benches/run.sh                 # ~4 minutes; prints one table
#   ./benches/run.sh --soak          # also a 5-minute RSS soak of signgate
#   ./benches/run.sh --help
#
# Everything runs on loopback and is stopped on exit. The upstream stand-in is
# nginx serving TLS with a certificate made at run time; every gateway
# verifies it against that CA, as in production. Not part of CI (too heavy).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=10        # seconds per timed run
WARMUP=3           # seconds of discarded warm-up per contender
ROUNDS=3           # A B C D, A B C D, ... ; the median of rounds is reported
CONNS=64           # keep-alive connections of the load generator
WORKERS=1          # nginx worker_processes = signgate worker threads
SOAK=0             # seconds of RSS soak (0 = off; --soak = 300)
PIN=auto           # pin the gateway to CPU 1, load generator + upstream to CPU 0
BUILD=1
AUDIT_NULL=0       # also run signgate with [audit] path = "-" to /dev/null
PERF=""            # --perf=FILE: record a perf profile of signgate under load
SIGNGATE=""        # --bin=PATH: benchmark this signgate binary instead of building one
ONLY=""            # --only=a,b: just these contenders' throughput runs (development)
MEMORY=0           # --memory: with --only, also the signgate memory runs

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --duration S      seconds per timed run (default $DURATION)
  --rounds N        rounds of A B C D (default $ROUNDS)
  --connections N   load generator connections (default $CONNS)
  --workers N       gateway workers: nginx worker_processes and
                    SIGNGATE_WORKER_THREADS (default $WORKERS)
  --soak[=S]        add an RSS soak of S seconds (default 300) under load
  --audit-null      also measure signgate with the audit log on stdout > /dev/null
  --no-pin          do not pin processes to CPUs
  --no-build        use the existing release binary
  --bin=PATH        benchmark this signgate binary (implies --no-build)
  --only=LIST       only the throughput runs of these contenders (direct, nginx,
                    njs, signgate, signgate-null, signgate-redis), for development
  --memory          with --only: also measure signgate's memory (idle, 1,000
                    connections), as the full run does
  --perf=FILE       also profile signgate (perf record, cpu-clock) during one
                    more run; the report goes to FILE
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift ;;
        --rounds) ROUNDS=$2; shift ;;
        --connections) CONNS=$2; shift ;;
        --workers) WORKERS=$2; shift ;;
        --soak) SOAK=300 ;;
        --soak=*) SOAK=${1#--soak=} ;;
        --audit-null) AUDIT_NULL=1 ;;
        --no-pin) PIN=0 ;;
        --no-build) BUILD=0 ;;
        --perf=*) PERF=${1#--perf=} ;;
        --only=*) ONLY=${1#--only=} ;;
        --memory) MEMORY=1 ;;
        --bin=*) SIGNGATE=${1#--bin=}; BUILD=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- prerequisites -----------------------------------------------------------
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
NJS_MODULE=/usr/lib/nginx/modules/ngx_http_js_module.so
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ -f "$NJS_MODULE" ] || missing+=(libnginx-mod-http-js)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v pgrep >/dev/null 2>&1 || missing+=(procps)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v oha >/dev/null 2>&1; then
    # oha drives the fixed-rate runs (wrk cannot hold a rate); from crates.io.
    log "installing oha (cargo install --locked oha --version 1.16.0; a few minutes, once)"
    cargo install --locked --quiet oha --version 1.16.0
fi

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$BUILD" = 1 ]; then
    log "cargo build --release"
    cargo build --release --locked --quiet
fi
SIGNGATE=${SIGNGATE:-$TARGET_DIR/release/signgate}
[ -x "$SIGNGATE" ] || die "no release binary at $SIGNGATE (build it or drop --no-build)"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$PIN" = auto ]; then
    if [ "$(nproc)" -ge 2 ] && [ "$WORKERS" -le $(($(nproc) - 1)) ]; then PIN=1; else PIN=0; fi
fi
if [ "$PIN" = 1 ]; then
    # Core 0: load generator and upstream (the environment); the other cores:
    # the gateway under test. Every gateway gets the same cores.
    LOADCPU=0
    GWCPU="1-$(($(nproc) - 1))"
    ON_LOAD=(taskset -c "$LOADCPU")
    ON_GW=(taskset -c "$GWCPU")
else
    ON_LOAD=()
    ON_GW=()
fi
on_load() { "${ON_LOAD[@]}" "$@"; }

# --- scratch space and cleanup -----------------------------------------------
TMP=$(mktemp -d /tmp/signgate-bench.XXXXXX)
chmod 755 "$TMP"   # nginx workers run as www-data
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {   # wait_port PORT NAME
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "$2 did not start listening on 127.0.0.1:$1"
}

# --- PKI: a throw-away CA and the upstream's certificate ---------------------
log "generating a CA and the upstream certificate in $TMP"
(
    cd "$TMP"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=signgate bench CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=localhost" -keyout up-key.pem -out up.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' > up.ext
    openssl x509 -req -in up.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
        -extfile up.ext -out up.pem 2>/dev/null
)

# --- the request body: a ~300-byte create-order, keys unsorted, one ₹ ---------
BODY='{"order_id":"ORD-20260513-6116229263036","order_amount":"1050.00","order_currency":"INR","order_note":"Monthly plan ₹1050, invoice 2026/05","service_type":"DIGITAL","customer":{"phone":"9876543210","name":"Asha Verma","email":"asha.verma@example.in"},"return_url":"https://merchant.example.in/pay/return?order=6116229263036"}'
printf '%s' "$BODY" > "$TMP/body.json"
API_KEY=pk_test_bench_0123456789
SECRET=sk_test_bench_$(openssl rand -hex 16)
export KWIKPAISA_API_KEY=$API_KEY KWIKPAISA_SECRET_KEY=$SECRET
UPATH=/api/v3/pg/order/create
cat > "$TMP/post.lua" <<EOF
wrk.method = "POST"
wrk.body = [==[$BODY]==]
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
EOF

# --- nginx configurations ------------------------------------------------------
UP_PORT=$(free_port)
UP_PLAIN_PORT=$(free_port)   # the same upstream without TLS: the latency baseline
nginx_conf() {   # nginx_conf NAME WORKERS SERVER_BLOCK [MAIN_EXTRA]
    local dir=$TMP/nginx-$1
    mkdir -p "$dir"
    cat > "$dir/nginx.conf" <<EOF
load_module $NJS_MODULE;
worker_processes $2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
${4:-}
events { worker_connections 8192; }
worker_rlimit_nofile 65536;
http {
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    default_type application/json;
    keepalive_requests 100000;
$3
}
EOF
}

start_nginx() {   # start_nginx NAME load|gw
    local dir=$TMP/nginx-$1
    if [ "$2" = load ]; then
        "${ON_LOAD[@]}" "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' &
    else
        "${ON_GW[@]}" "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' &
    fi
    PIDS+=($!)
    echo $! > "$dir/master.pid"
}

# The upstream (provider stand-in): TLS, HTTP/1.1, answers every POST with a
# KwikPaisa-shaped JSON; /__capture echoes what a gateway sent. It logs only
# the first request of each connection, to count handshakes and resumptions.
# A plain-HTTP listener serves the same answer: the baseline of the fixed-rate
# latency runs (a TLS baseline would charge the load generator's handshakes).
nginx_conf upstream 1 "
    js_import capture from $ROOT/benches/nginx/capture.js;
    map \$connection_requests \$first_on_conn { 1 1; default 0; }
    log_format conn '\$ssl_session_reused \$ssl_protocol';
    server {
        listen 127.0.0.1:$UP_PORT ssl;
        ssl_certificate $TMP/up.pem;
        ssl_certificate_key $TMP/up-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:4m;
        keepalive_requests 1000;   # nginx's default: pooled clients reconnect, and resume
        listen 127.0.0.1:$UP_PLAIN_PORT;
        access_log $TMP/nginx-upstream/conns.log conn if=\$first_on_conn;
        client_body_buffer_size 128k;
        client_body_in_single_buffer on;
        location = /__capture { js_content capture.capture; }
        location / {
            return 200 '{\"status\":\"success\",\"code\":\"200\",\"message\":\"Order created\",\"return_data\":{\"kwikX_order_id\":\"kp_5f0c2a9e-8d1b-4c7e-9a41-2f6b3c8d9e10\",\"order_status\":\"UN_PAID\"}}';
        }
    }"
start_nginx upstream load

# nginx as a plain reverse proxy (no signing), TLS-verified pooled upstream.
proxy_common="
    upstream provider {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
    }
    access_log __DIR__/access.log combined buffer=64k flush=1s;
    client_body_buffer_size 128k;
    client_body_in_single_buffer on;
    client_max_body_size 1m;
    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    proxy_set_header Host localhost;
    proxy_ssl_verify on;
    proxy_ssl_trusted_certificate $TMP/ca.pem;
    proxy_ssl_name localhost;
    proxy_ssl_server_name on;
    proxy_ssl_session_reuse on;
    proxy_ssl_protocols TLSv1.2 TLSv1.3;"
NGINX_PORT=$(free_port)
nginx_conf plain "$WORKERS" "${proxy_common//__DIR__/$TMP/nginx-plain}
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location /kwikpaisa/ { proxy_pass https://provider/; }
    }"

# nginx + njs: the same proxy, plus canonical JSON and the KwikPaisa HMAC.
NJS_PORT=$(free_port)
nginx_conf njs "$WORKERS" "${proxy_common//__DIR__/$TMP/nginx-njs}
    js_import sign from $ROOT/benches/nginx/sign.js;
    js_set \$kp_body sign.body;
    js_set \$kp_ts sign.timestamp;
    js_set \$kp_sig sign.signature;
    js_set \$kp_key sign.apiKey;
    server {
        listen 127.0.0.1:$NJS_PORT;
        location /kwikpaisa/ {
            proxy_set_body \$kp_body;
            proxy_set_header Connection \"\";
            proxy_set_header Host localhost;
            proxy_set_header Content-Type application/json;
            proxy_set_header X-API-KEY \$kp_key;
            proxy_set_header X-TIMESTAMP \$kp_ts;
            proxy_set_header X-SIGNATURE \$kp_sig;
            proxy_pass https://provider/;
        }
    }" "env KWIKPAISA_API_KEY; env KWIKPAISA_SECRET_KEY;"

# signgate: the kwikpaisa route, a file credential, the audit log on (as in
# production), no rate limits, admin listener off.
SG_PORT=$(free_port)
sg_conf() {   # sg_conf FILE AUDIT_PATH [FLEET_REDIS_PORT]
    cat > "$1" <<EOF
[listener]
addr = "127.0.0.1:$SG_PORT"
max_connections = 10000
[admin]
addr = ""
[access]
allow = ["127.0.0.0/8"]
[egress]
ca_file = "$TMP/ca.pem"
pool_idle_per_host = 64
max_connections_per_host = 64
[audit]
path = "$2"
max_files = 2
[credentials.kwikpaisa]
source = "file"
path = "$TMP/kwikpaisa.toml"
[[route]]
name = "kwikpaisa"
match_prefix = "/kwikpaisa/"
strip_prefix = true
upstream = "https://127.0.0.1:$UP_PORT"
credential = "kwikpaisa"
scheme = "kwikpaisa"
methods = ["POST"]
EOF
    if [ -n "${3:-}" ]; then
        # signgate + Redis: [fleet], and a route limit far above the load so
        # every request runs the limit script (one round trip) and passes.
        cat >> "$1" <<EOF
limit = { rate = 4000000, burst = 4000000 }
[fleet]
redis_url = "redis://127.0.0.1:$3/0"
instance = "bench"
EOF
    fi
}
printf 'api_key = "%s"\nsecret_key = "%s"\n' "$API_KEY" "$SECRET" > "$TMP/kwikpaisa.toml"
chmod 600 "$TMP/kwikpaisa.toml"
sg_conf "$TMP/signgate.toml" "$TMP/audit/signgate.jsonl"
sg_conf "$TMP/signgate-null.toml" "-"
# The fleet's Redis, persistence off, on the gateway's CPU: its work is
# charged to the gateway (in production it runs on another host).
REDIS_PORT=$(free_port)
"${ON_GW[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" >/dev/null 2>&1 &
PIDS+=($!)
REDIS_PID=$!
sg_conf "$TMP/signgate-redis.toml" "$TMP/audit/signgate-redis.jsonl" "$REDIS_PORT"
SG_PID=""
start_signgate() {   # start_signgate CONFIG
    SIGNGATE_WORKER_THREADS=$WORKERS SIGNGATE_LOG=warn "${ON_GW[@]}" "$SIGNGATE" run --config "$1" >/dev/null 2>"$TMP/signgate.err" &
    SG_PID=$!
    PIDS+=("$SG_PID")
    wait_port "$SG_PORT" signgate
}
stop_signgate() {
    kill -TERM "$SG_PID" 2>/dev/null || true
    wait "$SG_PID" 2>/dev/null || true
}

wait_port "$UP_PORT" "upstream nginx"
start_nginx plain gw
start_nginx njs gw
wait_port "$NGINX_PORT" "nginx"
wait_port "$NJS_PORT" "nginx+njs"
start_signgate "$TMP/signgate.toml"

status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
SG_IDLE_RSS=$(status_kib "$SG_PID" VmRSS)

# --- checks before timing ------------------------------------------------------
log "checking every contender answers 200 and both signers send the same signed request"
for url in "http://127.0.0.1:$SG_PORT/kwikpaisa$UPATH" "http://127.0.0.1:$NGINX_PORT/kwikpaisa$UPATH" \
    "http://127.0.0.1:$NJS_PORT/kwikpaisa$UPATH"; do
    code=$(curl -s -o "$TMP/resp" -w '%{http_code}' -H 'content-type: application/json' --data-binary @"$TMP/body.json" "$url")
    [ "$code" = 200 ] || die "$url answered $code: $(head -c 300 "$TMP/resp")"
done
code=$(curl -s -o "$TMP/resp" -w '%{http_code}' --cacert "$TMP/ca.pem" -H 'content-type: application/json' \
    --data-binary @"$TMP/body.json" "https://localhost:$UP_PORT$UPATH")
[ "$code" = 200 ] || die "upstream answered $code"
for who in sg njs; do
    port=$SG_PORT; [ $who = njs ] && port=$NJS_PORT
    curl -s -H 'content-type: application/json' --data-binary @"$TMP/body.json" \
        "http://127.0.0.1:$port/kwikpaisa/__capture" > "$TMP/capture-$who.json"
done
python3 - "$TMP" "$SIGNGATE" "$API_KEY" <<'EOF' || die "the signed requests differ (see above)"
import json, subprocess, sys
tmp, signgate, api_key = sys.argv[1:4]
body = open(f"{tmp}/body.json", "rb").read()
ok = True
for who in ("sg", "njs"):
    c = json.load(open(f"{tmp}/capture-{who}.json"))
    out = subprocess.run([signgate, "sign", "--timestamp", c["timestamp"]], input=body,
                         capture_output=True, check=True).stdout.decode()
    want = dict(l.split(":", 1) for l in out.splitlines() if ":" in l)
    canon, sig = want["canonical payload"].strip(), want["signature"].strip()
    name = {"sg": "signgate", "njs": "nginx+njs"}[who]
    for what, got, exp in (("body", c["body"], canon), ("X-SIGNATURE", c["signature"], sig),
                           ("X-API-KEY", c["api_key"], api_key),
                           ("Content-Type", c["content_type"], "application/json")):
        if got != exp:
            ok = False
            print(f"  {name}: {what} differs:\n    sent     {got!r}\n    expected {exp!r}", file=sys.stderr)
    print(f"  {name}: sent {len(c['body'].encode())} canonical bytes, X-TIMESTAMP {c['timestamp']}, "
          f"X-SIGNATURE {c['signature'][:16]}... == signgate sign --timestamp: {ok}", file=sys.stderr)
sys.exit(0 if ok else 1)
EOF

# --- timed runs ------------------------------------------------------------------
CONTENDERS=(direct nginx njs signgate signgate-redis)
[ "$AUDIT_NULL" = 1 ] && CONTENDERS+=(signgate-null)
[ -n "$ONLY" ] && IFS=, read -r -a CONTENDERS <<< "$ONLY"
url_of() {
    case "$1" in
        direct) echo "https://127.0.0.1:$UP_PORT$UPATH" ;;
        direct-plain) echo "http://127.0.0.1:$UP_PLAIN_PORT$UPATH" ;;
        nginx) echo "http://127.0.0.1:$NGINX_PORT/kwikpaisa$UPATH" ;;
        njs) echo "http://127.0.0.1:$NJS_PORT/kwikpaisa$UPATH" ;;
        signgate|signgate-null|signgate-redis) echo "http://127.0.0.1:$SG_PORT/kwikpaisa$UPATH" ;;
    esac
}
pids_of() {   # the processes whose CPU time is charged to a contender
    case "$1" in
        direct) echo "$(cat "$TMP/nginx-upstream/master.pid") $(pgrep -P "$(cat "$TMP/nginx-upstream/master.pid")" | tr '\n' ' ')" ;;
        nginx) echo "$(cat "$TMP/nginx-plain/master.pid") $(pgrep -P "$(cat "$TMP/nginx-plain/master.pid")" | tr '\n' ' ')" ;;
        njs) echo "$(cat "$TMP/nginx-njs/master.pid") $(pgrep -P "$(cat "$TMP/nginx-njs/master.pid")" | tr '\n' ' ')" ;;
        signgate-redis) echo "$SG_PID $REDIS_PID" ;;
        signgate*) echo "$SG_PID" ;;
    esac
}
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
conns_log_lines() { wc -l < "$TMP/nginx-upstream/conns.log" 2>/dev/null || echo 0; }
conns_log_resumed() { grep -c '^r' "$TMP/nginx-upstream/conns.log" 2>/dev/null || true; }
CLK_TCK=$(getconf CLK_TCK)
RESULTS=$TMP/results.tsv
: > "$RESULTS"

switch_signgate() {   # the audit-to-/dev/null and Redis variants need a restart
    local want=$1
    case "$want" in signgate|signgate-null|signgate-redis) ;; *) return ;; esac
    if [ "${SG_MODE:-signgate}" != "$want" ]; then
        stop_signgate; start_signgate "$TMP/$want.toml"; SG_MODE=$want
    fi
}

run_wrk() {   # run_wrk CONTENDER SECONDS ROUND(0 = warm-up)
    local c=$1 secs=$2 round=$3 pids t0 t1 l0 l1 r0 r1 out
    switch_signgate "$c"
    # shellcheck disable=SC2046
    pids=$(pids_of "$c")
    # shellcheck disable=SC2086
    t0=$(cpu_ticks $pids)
    l0=$(conns_log_lines)
    r0=$(conns_log_resumed)
    out=$(on_load wrk -t1 -c"$CONNS" -d"${secs}s" --timeout 5s -s "$TMP/post.lua" "$(url_of "$c")" | grep '^RESULT' || true)
    # shellcheck disable=SC2086
    t1=$(cpu_ticks $pids)
    sleep 0.3
    l1=$(conns_log_lines)
    r1=$(conns_log_resumed)
    [ -n "$out" ] || die "wrk printed no result for $c"
    if [ "$round" -gt 0 ]; then
        # contender round requests duration_us p50 p99 p999 max status_errors socket_errors
        #   cpu_ticks upstream_conns upstream_conns_resumed
        echo "$c $round ${out#RESULT } $((t1 - t0)) $((l1 - l0)) $((r1 - r0))" >> "$RESULTS"
        set -- $out
        log "$(printf '%-13s round %d: %8.0f req/s  p99 %6.2f ms  (%s non-2xx, %s socket errors)' "$c" "$round" \
            "$(echo "$2 $3" | awk '{print $1 / ($2 / 1e6)}')" "$(echo "$5" | awk '{print $1 / 1000}')" "$8" "$9")"
    fi
}

log "load: wrk -t1 -c$CONNS, ${DURATION}s per run, $ROUNDS rounds; gateways: $WORKERS worker(s); pinned: $PIN"
uptime > "$TMP/load-start"
for c in "${CONTENDERS[@]}"; do run_wrk "$c" "$WARMUP" 0; done
for r in $(seq "$ROUNDS"); do
    for c in "${CONTENDERS[@]}"; do run_wrk "$c" "$DURATION" "$r"; done
done
switch_signgate signgate

if [ -n "$PERF" ]; then
    command -v perf >/dev/null 2>&1 || die "--perf needs perf (Debian: linux-perf)"
    log "profiling signgate for ${DURATION}s (perf record -e cpu-clock)"
    perf record -q -e cpu-clock -F 4999 -p "$SG_PID" -o "$TMP/perf.data" -- sleep "$DURATION" 2>/dev/null &
    PERF_PID=$!
    on_load wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$TMP/post.lua" "$(url_of signgate)" >/dev/null
    wait "$PERF_PID" || true
    {
        echo "# by thread"
        perf report -i "$TMP/perf.data" --no-children --sort pid --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" || true
        echo "# by shared object"
        perf report -i "$TMP/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" || true
        echo "# by symbol"
        perf report -i "$TMP/perf.data" --no-children --sort dso,symbol --percent-limit 0.2 --stdio 2>/dev/null \
            | grep -v "^#" | grep -v "^$" | sed "s/ *- *- *$//" | cut -c1-200 || true
    } > "$PERF"
    cp "$TMP/perf.data" "$PERF.data"
    log "perf report written to $PERF (data: $PERF.data)"
fi

# --- signgate memory: 1,000 keep-alive connections; idle again afterwards --------
measure_memory() {
sample_rss() {   # sample_rss PID OUTFILE: max VmRSS (KiB) while running
    local max=0 v
    while kill -0 "$1" 2>/dev/null && [ ! -f "$2.stop" ]; do
        v=$(status_kib "$1" VmRSS || echo 0); [ "${v:-0}" -gt "$max" ] && max=$v
        echo "$max" > "$2"; sleep 0.2
    done
}
log "signgate under 1,000 keep-alive connections (oha -c1000 -q2000, then wrk -c1000 at full speed)"
sample_rss "$SG_PID" "$TMP/rss-1000-ka" & SAMPLER=$!
on_load oha --no-tui --output-format json --worker-threads 1 -z "${DURATION}s" -c 1000 -q 2000 -m POST -T application/json -D "$TMP/body.json" \
    "$(url_of signgate)" > "$TMP/ka1000.json" 2>/dev/null || true
touch "$TMP/rss-1000-ka.stop"; wait "$SAMPLER" 2>/dev/null || true
sample_rss "$SG_PID" "$TMP/rss-1000-full" & SAMPLER=$!
on_load wrk -t1 -c1000 -d"${DURATION}s" --timeout 10s -s "$TMP/post.lua" "$(url_of signgate)" | grep '^RESULT' > "$TMP/full1000" || true
touch "$TMP/rss-1000-full.stop"; wait "$SAMPLER" 2>/dev/null || true
sleep 3
SG_AFTER_RSS=$(status_kib "$SG_PID" VmRSS)
SG_HWM=$(status_kib "$SG_PID" VmHWM)
}

if [ -n "$ONLY" ]; then
    SOAK=0
    if [ "$MEMORY" = 1 ]; then measure_memory; fi
    uptime > "$TMP/load-end"
fi
if [ -z "$ONLY" ]; then
# --- fixed rate: half of signgate's throughput, latency against the direct path ---
HALF=$(python3 -c 'import statistics, sys
print(int(statistics.median(int(f[2]) / (int(f[3]) / 1e6) for f in map(str.split, open(sys.argv[1])) if f[0] == "signgate") / 2))' "$RESULTS")
log "fixed rate: $HALF req/s (half of signgate's median), oha -c$CONNS, ${DURATION}s each after 2 s of warm-up"
RATE_CONTENDERS=(direct-plain nginx njs signgate signgate-redis)
[ "$AUDIT_NULL" = 1 ] && RATE_CONTENDERS+=(signgate-null)
for c in "${RATE_CONTENDERS[@]}"; do
    switch_signgate "$c"
    on_load oha --no-tui --output-format quiet --worker-threads 1 -z 2s -c "$CONNS" -q "$HALF" \
        -m POST -T application/json -D "$TMP/body.json" "$(url_of "$c")" >/dev/null 2>&1 || true
    on_load oha --no-tui --output-format json --worker-threads 1 -z "${DURATION}s" -c "$CONNS" -q "$HALF" --latency-correction --insecure \
        -m POST -T application/json -D "$TMP/body.json" "$(url_of "$c")" > "$TMP/rate-$c.json" 2>"$TMP/rate-$c.err" \
        || die "oha failed for $c: $(tail -3 "$TMP/rate-$c.err")"
done
switch_signgate signgate

measure_memory

# --- optional soak ------------------------------------------------------------------
if [ "$SOAK" -gt 0 ]; then
    log "soak: signgate under wrk -c$CONNS for ${SOAK}s, RSS every 10 s"
    ( while kill -0 "$SG_PID" 2>/dev/null; do echo "$(date +%s) $(status_kib "$SG_PID" VmRSS)"; sleep 10; done ) > "$TMP/soak.tsv" &
    SOAKER=$!
    PIDS+=("$SOAKER")
    on_load wrk -t1 -c"$CONNS" -d"${SOAK}s" --timeout 5s -s "$TMP/post.lua" "$(url_of signgate)" | grep '^RESULT' > "$TMP/soak-wrk" || true
    kill "$SOAKER" 2>/dev/null || true
fi
uptime > "$TMP/load-end"
fi

# --- the table ---------------------------------------------------------------------
python3 - "$TMP" "$CLK_TCK" "$WORKERS" "$CONNS" "$DURATION" "$ROUNDS" "$PIN" "$SG_IDLE_RSS" "${SG_AFTER_RSS:-0}" \
    "${SG_HWM:-0}" "${HALF:-0}" "$SOAK" "$ONLY" <<'EOF'
import json, os, statistics, sys
tmp, clk, workers, conns, dur, rounds, pin, idle, after, hwm, half, soak, only = sys.argv[1:14]
clk = int(clk)
names = {"direct": "upstream direct", "nginx": "nginx proxy", "njs": "nginx+njs sign",
         "signgate": "signgate sign", "signgate-null": "signgate, audit>null",
         "signgate-redis": "signgate + Redis"}
runs = {}
for line in open(f"{tmp}/results.tsv"):
    f = line.split()
    c, vals = f[0], list(map(int, f[2:]))
    runs.setdefault(c, []).append(vals)
rows = {}
for c, rs in runs.items():
    rps = [r[0] / (r[1] / 1e6) for r in rs]
    med = lambda i: statistics.median(r[i] for r in rs) / 1000
    reqs = sum(r[0] for r in rs)
    rows[c] = dict(rps=statistics.median(rps), spread=(max(rps) - min(rps)) / statistics.median(rps) * 100,
                   p50=med(2), p99=med(3), p999=med(4), bad=sum(r[6] + r[7] for r in rs),
                   cpu_us=sum(r[8] for r in rs) / clk / reqs * 1e6, conns=sum(r[9] for r in rs),
                   resumed=sum(r[10] for r in rs))
order = [c for c in names if c in rows]
print()
print(f"signgate load benchmark: POST {os.path.getsize(tmp + '/body.json')} B order body, {conns} keep-alive connections, "
      f"{dur} s x {rounds} rounds (A B C D ...), median of rounds; gateways: {workers} worker(s)")
hdr = f"{'contender':<21}{'req/s':>9}{'±%':>5}{'p50 ms':>8}{'p99 ms':>8}{'p99.9 ms':>9}{'CPU µs/req':>11}{'errors':>7}{'TLS conns':>14}  " + \
      " ".join(f"{'/' + c:>9}" for c in order)
print(hdr)
print("-" * len(hdr))
for c in order:
    r = rows[c]
    ratios = " ".join(f"{r['rps'] / rows[o]['rps']:>9.2f}" for o in order)
    print(f"{names[c]:<21}{r['rps']:>9.0f}{r['spread']:>5.0f}{r['p50']:>8.2f}{r['p99']:>8.2f}{r['p999']:>9.2f}"
          f"{r['cpu_us']:>11.1f}{r['bad']:>7}{str(r['conns']) + ' (' + str(r['resumed']) + ' res)':>14}  {ratios}")
print("  ±%: spread of the rounds (max-min over median). CPU µs/req: user+sys of the gateway's processes (direct: the"
      " upstream's) over the requests it served.\n  TLS conns: connections the upstream accepted during the timed runs (res: TLS-resumed). /X: req/s ratio to X.")

def machine():
    print()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} cores ({cpu}), {os.uname().release}; pinned: "
          f"{'gateway on CPU 1-, wrk/oha + upstream on CPU 0' if pin == '1' else 'no'}")
    print(f"load before: {open(tmp + '/load-start').read().split('load average:')[1].strip()}; "
          f"after: {open(tmp + '/load-end').read().split('load average:')[1].strip()}")
mb = lambda kib: int(kib) / 1024
def memory_line():
    ka = int(open(f"{tmp}/rss-1000-ka").read().strip() or 0) if os.path.exists(f"{tmp}/rss-1000-ka") else 0
    full = int(open(f"{tmp}/rss-1000-full").read().strip() or 0) if os.path.exists(f"{tmp}/rss-1000-full") else 0
    ka_ok = "?"
    try:
        kj = json.load(open(f"{tmp}/ka1000.json"))
        ka_ok = f"{kj['summary']['requestsPerSec']:.0f} req/s, {kj.get('statusCodeDistribution', {}).get('200', 0)} x 200"
    except Exception:
        pass
    print(f"signgate memory: idle after start {mb(idle):.1f} MB; 1,000 keep-alive connections {mb(ka):.1f} MB ({ka_ok}); "
          f"1,000 connections at full speed {mb(full):.1f} MB; peak (VmHWM) {mb(hwm):.1f} MB; idle after load {mb(after):.1f} MB")
    return ka, full
if only:
    if os.path.exists(f"{tmp}/rss-1000-full"):
        print()
        memory_line()
    machine()
    sys.exit(0)

def oha(path):
    j = json.load(open(path))
    lp = j["latencyPercentiles"]
    s = j["summary"]
    codes = j.get("statusCodeDistribution", {})
    return dict(rps=s["requestsPerSec"], p50=lp["p50"] * 1000, p99=lp["p99"] * 1000, p999=lp["p99.9"] * 1000,
                ok=codes.get("200", 0), total=sum(codes.values()))
rated = [c for c in ("direct-plain", "nginx", "njs", "signgate", "signgate-redis", "signgate-null")
         if os.path.exists(f"{tmp}/rate-{c}.json")]
rate = {c: oha(f"{tmp}/rate-{c}.json") for c in rated}
names["direct-plain"] = "upstream, plain HTTP"
print()
print(f"fixed rate {half} req/s (half of signgate's max), oha -c{conns} --latency-correction:")
print(f"{'contender':<21}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'p99.9 ms':>9}{'+p99 vs upstream':>18}")
for c in rated:
    r = rate[c]
    note = "  (saturated: the rate is above its capacity)" if r["rps"] < 0.97 * int(half) else ""
    print(f"{names[c]:<21}{r['rps']:>9.0f}{r['p50']:>8.2f}{r['p99']:>8.2f}{r['p999']:>9.2f}"
          f"{r['p99'] - rate['direct-plain']['p99']:>18.2f}{note}")

print()
sg = rows["signgate"]
ka, full = memory_line()
print(f"signgate CPU time per request: {sg['cpu_us']:.1f} µs (user+sys, all threads, over the timed runs)")
soak_line = None
if int(soak) > 0 and os.path.exists(f"{tmp}/soak.tsv"):
    pts = [tuple(map(int, l.split())) for l in open(f"{tmp}/soak.tsv") if len(l.split()) == 2]
    if len(pts) >= 3:
        t0 = pts[0][0]
        after1 = [v for t, v in pts if t - t0 >= 60] or [pts[-1][1]]
        growth = (pts[-1][1] - after1[0]) / 1024
        soak_line = growth
        print(f"soak {soak} s: RSS {mb(pts[0][1]):.1f} MB at start, {mb(after1[0]):.1f} MB after 1 min, "
              f"{mb(pts[-1][1]):.1f} MB at the end, max {mb(max(v for _, v in pts)):.1f} MB; growth after minute 1: {growth:+.1f} MB")

print()
print("targets:")
def check(ok, text):
    print(f"  [{'met' if ok else 'MISSED'}] {text}")
check(sg["rps"] >= 1.0 * rows["nginx"]["rps"], f"signgate >= 1.0x nginx proxy: {sg['rps'] / rows['nginx']['rps']:.2f}x")
check(sg["rps"] >= 1.7 * rows["njs"]["rps"], f"signgate >= 1.7x nginx+njs: {sg['rps'] / rows['njs']['rps']:.2f}x")
added = rate["signgate"]["p99"] - rate["direct-plain"]["p99"]
check(added <= 1.0, f"added p99 at half max <= 1 ms: {added:+.2f} ms")
if "signgate-redis" in rows:
    sr = rows["signgate-redis"]
    check(sr["rps"] >= 0.8 * sg["rps"], f"signgate + Redis >= 0.8x signgate: {sr['rps'] / sg['rps']:.2f}x")
    fleet_p50 = rate["signgate-redis"]["p50"] - rate["signgate"]["p50"]
    check(fleet_p50 <= 0.3, f"Redis adds <= 0.3 ms at p50 (fixed rate): {fleet_p50:+.3f} ms")
check(sg["cpu_us"] <= rows["nginx"]["cpu_us"],
      f"CPU per request <= nginx proxy's: {sg['cpu_us']:.1f} µs against {rows['nginx']['cpu_us']:.1f}")
check(mb(idle) <= 10, f"idle RSS <= 10 MB: {mb(idle):.1f} MB")
check(mb(ka) <= 80, f"RSS with 1,000 keep-alive connections <= 80 MB: {mb(ka):.1f} MB")
check(mb(full) <= 80, f"RSS with 1,000 connections at full speed <= 80 MB: {mb(full):.1f} MB")
if soak_line is not None:
    check(soak_line <= 2.0, f"no RSS growth over the soak (<= 2 MB after minute 1): {soak_line:+.1f} MB")
else:
    print("  [not run] no RSS growth over 5 minutes: run with --soak")
print("  (canonicalize+sign targets: cargo bench --bench hot_path)")
machine()
EOF
