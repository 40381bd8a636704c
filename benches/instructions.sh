#!/usr/bin/env bash
# Work per request, counted rather than timed: signgate against nginx as a
# plain reverse proxy and nginx+njs signing, over a fixed number of requests.
#
#   ./benches/instructions.sh                  # ~5 minutes; prints one table
#   ./benches/instructions.sh --requests 5000  # quicker, a little less exact
#   ./benches/instructions.sh --help
#
# Wall-clock throughput on a shared 2-core machine varies by ±30% from run to
# run; the figures here do not depend on what else the machine runs:
#
# - user-space instructions per request, counted by callgrind (valgrind) with
#   the gateway under a fixed number of requests, start-up and warm-up left
#   out (the counters are zeroed after the warm-up and dumped at the end);
#   with --perf-counters (a CPU that exposes them; not in most VMs) also
#   `perf stat -e instructions:u,instructions:k` on the native process;
# - system calls and context switches per request (perf stat, tracepoints),
#   and user / system CPU time per request (/proc, 10 ms ticks, so these two
#   are the noisy ones) on the native process, the same number of requests.
#
# The setup is benches/run.sh's: the upstream stand-in is nginx over TLS,
# every gateway verifies it and pools connections, one worker each, the same
# 327-byte body, wrk with 64 keep-alive connections. Requests are counted at
# the upstream (its log of every request), so each figure is per proxied
# request. Valgrind runs ring and OpenSSL on their generic code paths (no
# SHA extensions), which adds the same few thousand instructions to the
# TLS and HMAC work of every contender.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

REQUESTS=20000     # requests per measurement
CONNS=64
CONTENDERS=nginx,njs,signgate
SIGNGATE=""
BUILD=1
CALLGRIND=1
NATIVE=1
PERF_COUNTERS=auto
KEEP=""            # --keep=DIR: keep the callgrind outputs there

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF
Options:
  --requests N      requests per measurement (default $REQUESTS)
  --connections N   wrk connections (default $CONNS)
  --only=LIST       contenders among nginx, njs, signgate (default $CONTENDERS)
  --bin=PATH        measure this signgate binary (implies --no-build)
  --no-build        use the existing release binary
  --no-callgrind    skip the callgrind runs (user-space instructions)
  --no-native       skip the native runs (syscalls, context switches, CPU time)
  --keep=DIR        keep the callgrind outputs (callgrind.out.CONTENDER) in DIR,
                    for callgrind_annotate --inclusive=yes
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --requests) REQUESTS=$2; shift ;;
        --connections) CONNS=$2; shift ;;
        --only=*) CONTENDERS=${1#--only=} ;;
        --bin=*) SIGNGATE=${1#--bin=}; BUILD=0 ;;
        --no-build) BUILD=0 ;;
        --no-callgrind) CALLGRIND=0 ;;
        --no-native) NATIVE=0 ;;
        --keep=*) KEEP=${1#--keep=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
IFS=, read -r -a CONTENDERS <<< "$CONTENDERS"

log() { printf '[instr %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

NJS_MODULE=/usr/lib/nginx/modules/ngx_http_js_module.so
for tool in nginx wrk openssl python3 curl perf; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || die "$tool is missing (apt-get install nginx-light libnginx-mod-http-js wrk openssl python3 curl linux-perf valgrind)"
done
[ "$CALLGRIND" = 0 ] || command -v valgrind >/dev/null 2>&1 || die "valgrind is missing (apt-get install valgrind)"
[ -f "$NJS_MODULE" ] || die "$NJS_MODULE is missing (apt-get install libnginx-mod-http-js)"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$BUILD" = 1 ]; then
    log "cargo build --release"
    cargo build --release --locked --quiet
fi
SIGNGATE=${SIGNGATE:-$TARGET_DIR/release/signgate}
[ -x "$SIGNGATE" ] || die "no release binary at $SIGNGATE"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if perf stat -e instructions:u -- true 2>&1 | grep -q 'not supported'; then PERF_COUNTERS=0; else PERF_COUNTERS=1; fi

TMP=$(mktemp -d /tmp/signgate-instr.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "$2 did not start listening on 127.0.0.1:$1"
}

# --- PKI, body, wrk script (as benches/run.sh) --------------------------------
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
function response(status, headers, body)
  if status ~= 200 then io.write("status " .. status .. "\n") end
end
EOF

# --- nginx: the upstream and the two nginx contenders ----------------------------
UP_PORT=$(free_port)
nginx_conf() {   # nginx_conf NAME SERVER_BLOCK [MAIN_EXTRA]
    local dir=$TMP/nginx-$1
    mkdir -p "$dir"
    cat > "$dir/nginx.conf" <<EOF
load_module $NJS_MODULE;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
${3:-}
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
$2
}
EOF
}
# The upstream logs one line per request: the request count of a measurement.
nginx_conf upstream "
    js_import capture from $ROOT/benches/nginx/capture.js;
    log_format one '.';
    server {
        listen 127.0.0.1:$UP_PORT ssl;
        ssl_certificate $TMP/up.pem;
        ssl_certificate_key $TMP/up-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:4m;
        keepalive_requests 1000;
        access_log $TMP/nginx-upstream/requests.log one;
        client_body_buffer_size 128k;
        client_body_in_single_buffer on;
        location / {
            return 200 '{\"status\":\"success\",\"code\":\"200\",\"message\":\"Order created\",\"return_data\":{\"kwikX_order_id\":\"kp_5f0c2a9e-8d1b-4c7e-9a41-2f6b3c8d9e10\",\"order_status\":\"UN_PAID\"}}';
        }
    }"
taskset -c 0 "$NGINX" -p "$TMP/nginx-upstream" -c "$TMP/nginx-upstream/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
upstream_requests() { wc -l < "$TMP/nginx-upstream/requests.log" 2>/dev/null || echo 0; }

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
GW_PORT=$(free_port)
# master_process off: one process, the worker, is the whole gateway (so
# valgrind sees all of it).
nginx_conf nginx "${proxy_common//__DIR__/$TMP/nginx-nginx}
    server {
        listen 127.0.0.1:$GW_PORT;
        location /kwikpaisa/ { proxy_pass https://provider/; }
    }" "master_process off;"
nginx_conf njs "${proxy_common//__DIR__/$TMP/nginx-njs}
    js_import sign from $ROOT/benches/nginx/sign.js;
    js_set \$kp_body sign.body;
    js_set \$kp_ts sign.timestamp;
    js_set \$kp_sig sign.signature;
    js_set \$kp_key sign.apiKey;
    server {
        listen 127.0.0.1:$GW_PORT;
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
    }" "master_process off; env KWIKPAISA_API_KEY; env KWIKPAISA_SECRET_KEY;"

mkdir -p "$TMP/audit"
cat > "$TMP/signgate.toml" <<EOF
[listener]
addr = "127.0.0.1:$GW_PORT"
max_connections = 10000
[admin]
addr = ""
[access]
allow = ["127.0.0.0/8"]
[egress]
ca_file = "$TMP/ca.pem"
pool_idle_per_host = 64
[audit]
path = "$TMP/audit/signgate.jsonl"
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
printf 'api_key = "%s"\nsecret_key = "%s"\n' "$API_KEY" "$SECRET" > "$TMP/kwikpaisa.toml"
chmod 600 "$TMP/kwikpaisa.toml"
wait_port "$UP_PORT" "upstream nginx"

# --- one contender, native or under callgrind ----------------------------------------
GW_PID=""
start_gw() {   # start_gw CONTENDER [WRAPPER...]
    local c=$1
    shift
    case "$c" in
        signgate)
            SIGNGATE_WORKER_THREADS=1 SIGNGATE_LOG=warn taskset -c 1 "$@" "$SIGNGATE" run --config "$TMP/signgate.toml" \
                >/dev/null 2>"$TMP/$c.err" & ;;
        nginx|njs)
            taskset -c 1 "$@" "$NGINX" -p "$TMP/nginx-$c" -c "$TMP/nginx-$c/nginx.conf" -g 'daemon off;' \
                >/dev/null 2>"$TMP/$c.err" & ;;
    esac
    GW_PID=$!
    PIDS+=("$GW_PID")
    wait_port "$GW_PORT" "$c"
    local code
    code=$(curl -s -o "$TMP/resp" -w '%{http_code}' -H 'content-type: application/json' --data-binary @"$TMP/body.json" \
        "http://127.0.0.1:$GW_PORT/kwikpaisa$UPATH")
    [ "$code" = 200 ] || die "$c answered $code: $(head -c 300 "$TMP/resp"; tail -5 "$TMP/$c.err")"
}
stop_gw() {
    kill -TERM "$GW_PID" 2>/dev/null || true
    for _ in $(seq 600); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
    # the port is reused by the next contender
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$GW_PORT") 2>/dev/null || break; sleep 0.1; done
}
load() {   # load N: wrk until the upstream has seen N more requests
    local target=$(($(upstream_requests) + $1)) wrk_pid
    taskset -c 0 wrk -t1 -c"$CONNS" -d3600s --timeout 30s -s "$TMP/post.lua" "http://127.0.0.1:$GW_PORT/kwikpaisa$UPATH" \
        > "$TMP/wrk.out" 2>&1 &
    wrk_pid=$!
    while [ "$(upstream_requests)" -lt "$target" ]; do
        kill -0 "$wrk_pid" 2>/dev/null || die "wrk stopped: $(cat "$TMP/wrk.out")"
        sleep 0.05
    done
    kill -INT "$wrk_pid" 2>/dev/null || true
    wait "$wrk_pid" 2>/dev/null || true
    if grep -q '^status' "$TMP/wrk.out"; then die "non-200 answers: $(grep -c '^status' "$TMP/wrk.out")"; fi
}
poke() {   # one request, to make a waiting gateway run (callgrind_control acts then)
    curl -s -o /dev/null -H 'content-type: application/json' --data-binary @"$TMP/body.json" \
        "http://127.0.0.1:$GW_PORT/kwikpaisa$UPATH" || true
}
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
RESULTS=$TMP/results
: > "$RESULTS"

native() {   # native CONTENDER
    local c=$1 n0 n1 t0 t1 events
    log "$c native: $REQUESTS requests (perf stat: syscalls, context switches; /proc: CPU time)"
    start_gw "$c"
    load 2000
    events=task-clock,context-switches,raw_syscalls:sys_enter
    [ "$PERF_COUNTERS" = 1 ] && events=$events,instructions:u,instructions:k
    n0=$(upstream_requests)
    t0=$(cpu_ticks "$GW_PID")
    perf stat -x, -e "$events" -p "$GW_PID" -o "$TMP/perf-$c.csv" &
    local perf_pid=$!
    sleep 0.5
    load "$REQUESTS"
    sleep 0.3
    kill -INT "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
    t1=$(cpu_ticks "$GW_PID")
    n1=$(upstream_requests)
    stop_gw
    python3 - "$c" "$TMP/perf-$c.csv" "$((n1 - n0))" "$t0" "$t1" "$(getconf CLK_TCK)" >> "$RESULTS" <<'EOF'
import sys
c, path, n, t0, t1, clk = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(), sys.argv[5].split(), int(sys.argv[6])
vals = {}
for line in open(path):
    f = line.strip().split(",")
    if len(f) > 2 and f[0] and not f[0].startswith("<"):
        try:
            vals[f[2]] = float(f[0])
        except ValueError:
            pass
user = (int(t1[0]) - int(t0[0])) / clk * 1e6 / n
sys_ = (int(t1[1]) - int(t0[1])) / clk * 1e6 / n
print(c, "native", n, f"{vals.get('raw_syscalls:sys_enter', 0) / n:.2f}", f"{vals.get('context-switches', 0) / n:.3f}",
      f"{user:.1f}", f"{sys_:.1f}", f"{vals.get('instructions:u', 0) / n:.0f}", f"{vals.get('instructions:k', 0) / n:.0f}")
EOF
}

under_callgrind() {   # under_callgrind CONTENDER
    local c=$1 n0 n1 out=$TMP/callgrind.out.$1
    log "$c under callgrind: $REQUESTS requests after a 2000-request warm-up (slow: valgrind)"
    start_gw "$c" valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no
    load 2000
    # zero the counters (acted on while the gateway runs: the poke), then the run
    callgrind_control -z "$GW_PID" >/dev/null 2>&1 &
    local ctl=$!
    while kill -0 "$ctl" 2>/dev/null; do poke; sleep 0.2; done
    n0=$(upstream_requests)
    load "$REQUESTS"
    sleep 0.5
    n1=$(upstream_requests)
    callgrind_control -d "$GW_PID" >/dev/null 2>&1 &
    ctl=$!
    while kill -0 "$ctl" 2>/dev/null; do poke; sleep 0.2; done
    stop_gw
    # -d wrote OUT.1: the counts from the zeroing to the dump
    local dump=$out.1 ir
    [ -f "$dump" ] || die "no callgrind dump for $c"
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    if [ -n "$KEEP" ]; then mkdir -p "$KEEP"; cp "$dump" "$KEEP/callgrind.out.$c"; fi
    # SHA-256 block functions: valgrind hides the CPU's SHA extensions, so
    # they run a software path many times slower than natively.
    local sha
    sha=$(callgrind_annotate --threshold=100 "$dump" 2>/dev/null \
        | awk '/sha256.*(compress|block_data_order)|sha256_block/ { gsub(",", "", $1); s += $1 } END { print s + 0 }')
    echo "$c callgrind $((n1 - n0)) $ir $sha" >> "$RESULTS"
}

for c in "${CONTENDERS[@]}"; do
    case "$c" in nginx|njs|signgate) ;; *) die "unknown contender $c" ;; esac
    [ "$NATIVE" = 1 ] && native "$c"
    [ "$CALLGRIND" = 1 ] && under_callgrind "$c"
done

python3 - "$RESULTS" "$REQUESTS" "$CONNS" "$PERF_COUNTERS" <<'EOF'
import sys
path, reqs, conns, counters = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
names = {"nginx": "nginx proxy", "njs": "nginx+njs sign", "signgate": "signgate sign"}
rows = {}
for line in open(path):
    f = line.split()
    r = rows.setdefault(f[0], {})
    if f[1] == "native":
        r.update(n=int(f[2]), sc=float(f[3]), cs=float(f[4]), user=float(f[5]), sys=float(f[6]),
                 iu=float(f[7]), ik=float(f[8]))
    else:
        r.update(cn=int(f[2]), ir=int(f[3]) / max(int(f[2]), 1), nosha=(int(f[3]) - int(f[4])) / max(int(f[2]), 1))
order = [c for c in names if c in rows]
print()
print(f"work per proxied request: POST 327 B, wrk -c{conns}, {reqs} requests after a warm-up, gateway 1 worker")
hdr = f"{'contender':<16}{'user instr':>11}{'/nginx':>8}{'/njs':>7}{'excl. SHA':>10}{'/nginx':>8}{'syscalls':>9}{'ctx sw':>8}{'user µs':>8}{'sys µs':>8}{'CPU µs':>8}"
if counters:
    hdr += f"{'instr:u':>10}{'instr:k':>10}{'total':>10}"
print(hdr)
print("-" * len(hdr))
def ratio(c, o, k):
    a, b = rows[c].get(k), rows.get(o, {}).get(k)
    return f"{a / b:.2f}" if a and b else "-"
for c in order:
    r = rows[c]
    ir = f"{r['ir']:,.0f}" if "ir" in r else "-"
    nosha = f"{r['nosha']:,.0f}" if "nosha" in r else "-"
    line = f"{names[c]:<16}{ir:>11}{ratio(c, 'nginx', 'ir'):>8}{ratio(c, 'njs', 'ir'):>7}{nosha:>10}{ratio(c, 'nginx', 'nosha'):>8}"
    if "sc" in r:
        line += f"{r['sc']:>9.2f}{r['cs']:>8.3f}{r['user']:>8.1f}{r['sys']:>8.1f}{r['user'] + r['sys']:>8.1f}"
        if counters:
            line += f"{r['iu']:>10,.0f}{r['ik']:>10,.0f}{r['iu'] + r['ik']:>10,.0f}"
    print(line)
print("  user instr: user-space instructions per request (callgrind, all threads; /X: ratio to X). excl. SHA: without the")
print("  SHA-256 block functions, which valgrind runs in software (natively: the CPU's SHA extensions, a small fraction).")
print("  syscalls, ctx sw: per request (perf stat, native). user/sys/CPU µs: CPU time per request (native, 10 ms ticks).")
if not counters:
    print("  (no hardware counters on this machine: kernel instructions are not counted; sys µs and syscalls stand for them)")
EOF
