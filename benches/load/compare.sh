#!/usr/bin/env bash
# mediagate and nginx side by side, in one run, on the same origin: cache hits, pass-through
# GETs, uploads (the 4 KiB latency also with `server.busy_poll`), and mediagate's memory under
# 64 concurrent 50 MiB uploads. Writes benches/RESULTS.md. See the README's "Load comparison
# against nginx".
#
# Topology (2 cores): the server under test (mediagate with `server.threads: 1`, or nginx with
# `worker_processes 1`) is pinned to CPU 0; the load generator (wrk) and the origin to CPU 1. For
# one target of the latency runs, direct to the origin, the origin is moved to CPU 0 for the run.
# Each scenario runs RUNS times (default 3) for DURATION seconds (default 5), the servers taking
# turns run by run; the median counts.
#
# mediagate is built as the Dockerfile builds it (scripts/build-production: the `production`
# profile with profile-guided optimisation; about 11 minutes the first time here); the reference
# with the `production` profile alone (about 5 minutes the first time).
#
#   benches/load/compare.sh            # everything, about 7 minutes after the build
#   RUNS=1 DURATION=2 benches/load/compare.sh   # a quick look
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
. benches/load/common.sh
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-32}
OUT=${OUT:-$ROOT/benches/RESULTS.md}

say() { printf '%s\n' "$*" >&2; }

install_missing() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    [ ${#missing[@]} -eq 0 ] && return
    local sudo=
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    say "installing ${missing[*]}"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_missing
say "building mediagate as the Dockerfile does (scripts/build-production: production profile, PGO)"
scripts/build-production
say "building the reference (profile production)"
cargo build --profile production --quiet --example bare_pingora
BIN=$ROOT/target/pgo/mediagate
BARE=$ROOT/target/production/examples/bare_pingora

# Everything lives on tmpfs, so the disk does not set the pace, and goes when the script ends.
BASE=/dev/shm
[ -d "$BASE" ] || BASE=${TMPDIR:-/tmp}
start_workspace "$BASE/mediagate-compare.XXXXXX"

wait_for_line() { # file pattern
    for _ in $(seq 200); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    say "timed out waiting for '$2' in $1"; cat "$1" >&2; exit 1
}

# Each command that starts a server or a load, as run, for the report (`$WORK` and the fixture
# credentials written as names).
record() {
    local line="$*"
    line=${line//"$WORK"/'$WORK'}
    line=${line//"$ROOT/"/}
    [ -n "${BASIC:-}" ] && line=${line//"$BASIC"/'$BASIC'}
    printf '%s\n' "$line" >>"$WORK/commands"
}

wait_ready() { # url
    for _ in $(seq 200); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    say "timed out waiting for $1"; exit 1
}

# --- the origin (CPU 1) ------------------------------------------------------------------------
record taskset -c 1 "$BIN" origin --listen 127.0.0.1:0 --data "$WORK/store" \
    --account-sid '$ACCOUNT' --auth-token '$TOKEN' --exit-with-parent
taskset -c 1 "$BIN" origin --listen 127.0.0.1:0 --data "$WORK/store" \
    --account-sid "$ACCOUNT" --auth-token "$TOKEN" --exit-with-parent \
    <"$WORK/alive" >"$WORK/origin.out" 2>"$WORK/origin.err" &
PIDS+=($!)
ORIGIN_PID=$!
wait_for_line "$WORK/origin.out" "listening on"
ORIGIN=$(grep -o 'http://[0-9.:]*' "$WORK/origin.out" | head -1)
ORIGIN_PORT=${ORIGIN##*:}
BASIC=$(printf '%s:%s' "$ACCOUNT" "$TOKEN" | base64 -w0)

# Bodies: a PNG head and filler, so mediagate's sniffing sees a PNG.
make_body() { # bytes file
    python3 - "$1" "$2" <<'PY'
import sys
size, path = int(sys.argv[1]), sys.argv[2]
head = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR"
with open(path, "wb") as f:
    f.write(head + bytes(i % 251 for i in range(size - len(head))))
PY
}
make_body $((1024 * 1024)) "$WORK/1m.png"
make_body 4096 "$WORK/4k.png"
make_body $((50 * 1024 * 1024)) "$WORK/50m.png"

MEDIA=$(curl -fsS -u "$ACCOUNT:$TOKEN" -H 'Content-Type: image/png' --data-binary @"$WORK/1m.png" \
    "$ORIGIN/v1/Services/$SERVICE/Media" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sid"])')
METADATA=/v1/Services/$SERVICE/Media/$MEDIA
CONTENT=$METADATA/Content
UPLOAD=/v1/Services/$SERVICE/Media

# --- mediagate (CPU 0): with every feature on, with the cache off, and a fresh one for memory --
start_mediagate() { # name cache_memory [server key] -> sets PORT_<name>, METRICS_<name>, PID_<name>
    local name=$1 port metrics
    port=$(free_port); metrics=$(free_port)
    mediagate_config "$port" "$metrics" "$2" "${3:-}" >"$WORK/$name.yaml"
    record taskset -c 0 "$BIN" proxy --config "$WORK/$name.yaml" --exit-with-parent \
        "# mediagate_config $port $metrics $2 ${3:-}"
    taskset -c 0 "$BIN" proxy --config "$WORK/$name.yaml" --exit-with-parent \
        <"$WORK/alive" >"$WORK/$name.access.log" 2>"$WORK/$name.err" &
    PIDS+=($!)
    printf -v "PID_$name" '%s' "$!"
    printf -v "PORT_$name" '%s' "$port"
    wait_ready "http://127.0.0.1:$metrics/readyz"
}
start_mediagate mg 256MiB
start_mediagate mgpass 0
# The same as mg, with its workers polling 200 µs after each request event before they sleep.
start_mediagate mgpoll 256MiB "busy_poll: 200us"

# --- the reference (CPU 0): pingora and pingora-cache over mediagate's cache storage, no features
# (and on a second port without the cache, for pass-through; on a third, pingora's floor).
BARE_PORT=$(free_port); BARE_PASS_PORT=$(free_port); FLOOR_PORT=$(free_port)
# Its floor answers every read with the metadata JSON as the origin gives it.
curl -fsS -u "$ACCOUNT:$TOKEN" -o "$WORK/floor.json" "$ORIGIN$METADATA"
record taskset -c 0 "$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$ORIGIN_PORT" "127.0.0.1:$BARE_PASS_PORT" \
    "127.0.0.1:$FLOOR_PORT" "$WORK/floor.json"
taskset -c 0 "$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$ORIGIN_PORT" "127.0.0.1:$BARE_PASS_PORT" \
    "127.0.0.1:$FLOOR_PORT" "$WORK/floor.json" \
    <"$WORK/alive" >/dev/null 2>"$WORK/bare.err" &
PIDS+=($!)
# It injects no credentials: its first read (the one that fills its cache) brings them.
for _ in $(seq 200); do
    curl -fsS -o /dev/null -u "$ACCOUNT:$TOKEN" "http://127.0.0.1:$BARE_PORT$METADATA" 2>/dev/null && break
    sleep 0.05
done

# --- nginx (CPU 0) -------------------------------------------------------------------------------
NGINX_PORT=$(free_port); NGINX_TUNED_PORT=$(free_port); NGINX_PASS_PORT=$(free_port)
mkdir -p "$WORK/nginx/cache"
# nginx started as root runs its worker as `nobody`: let it into its own directories.
chmod 755 "$WORK"
chmod -R 777 "$WORK/nginx"
fill() {
    sed -e "s|@PREFIX@|$WORK/nginx|g" -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" \
        -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@NGINX_TUNED_PORT@|$NGINX_TUNED_PORT|g" \
        -e "s|@NGINX_PASS_PORT@|$NGINX_PASS_PORT|g" -e "s|@BASIC@|$BASIC|g" "$1"
}
fill config/nginx/compare.conf >"$WORK/nginx/nginx.conf"
fill config/nginx/common.conf >"$WORK/nginx/common.conf"
record taskset -c 0 nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g "'daemon off;'"
taskset -c 0 nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' \
    2>"$WORK/nginx.err" &
PIDS+=($!)
wait_ready "http://127.0.0.1:$NGINX_PASS_PORT$METADATA"

# --- measuring -----------------------------------------------------------------------------------
cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
local auth = os.getenv("WRK_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
LUA
cat >"$WORK/get.lua" <<'LUA'
wrk.headers["Authorization"] = os.getenv("WRK_AUTH")
LUA

# CPU 0's busy and idle time so far (clock ticks). Busy counts user, system, interrupts and
# softirqs: on loopback much of a server's network work runs as softirqs, which a process's
# own CPU time leaves out. Only the server being measured is busy on CPU 0.
cpu0_times() {
    awk '/^cpu0 / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat
}

# One wrk run on CPU 1; prints "requests_per_s p50_ms p99_ms cpu0_busy errors", cpu0_busy being
# the share of CPU 0 (the server under test's core) that was busy during the run.
wrk_once() { # url [body_file auth] [connections]
    local url=$1 body=${2:-} auth=${3:-} conns=${4:-$CLIENTS} script=() busy idle
    if [ -n "$body" ]; then script=(-s "$WORK/post.lua")
    elif [ -n "$auth" ]; then script=(-s "$WORK/get.lua"); fi
    read -r busy idle < <(cpu0_times)
    record ${body:+WRK_BODY=$body} ${auth:+WRK_AUTH=\"$auth\"} taskset -c 1 wrk -t1 -c"$conns" \
        -d"${DURATION}s" --latency "${script[@]}" "$url"
    WRK_BODY=$body WRK_AUTH=$auth taskset -c 1 wrk -t1 -c"$conns" -d"${DURATION}s" --latency \
        "${script[@]}" "$url" >"$WORK/wrk.out"
    read -r BUSY IDLE < <(cpu0_times)
    BUSY=$((BUSY - busy)) IDLE=$((IDLE - idle)) python3 -c '
import os, re, sys
text = sys.stdin.read()
def ms(label):
    m = re.search(r"^\s*" + label + r"\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m: return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: (.*)", text)
busy, idle = int(os.environ["BUSY"]), int(os.environ["IDLE"])
print(rps, ms("50%"), ms("99%"), busy / max(busy + idle, 1), (errors.group(1) if errors else "0") + (" sock:" + sock.group(1).replace(" ", "") if sock else ""))' <"$WORK/wrk.out"
}

# Moves every thread of the origin to a core (threads it starts later follow their creator's).
move_origin() { # cpu
    record taskset -a -p -c "$1" '$ORIGIN_PID'
    taskset -a -p -c "$1" "$ORIGIN_PID" >/dev/null
}

# Measures several targets, each given as "url|body_file|auth|connections|origin_cpu" (empty
# fields take wrk_once's defaults; with origin_cpu, the origin runs on that core for the run).
# The runs take turns, target after target, RUNS rounds, so that whatever this shared machine
# does meanwhile falls on every target alike rather than on one block of runs. Prints one line
# per target, in order: its run with the median requests/s.
measure() {
    local targets=("$@") results=() i url body auth conns cpu
    for _ in $(seq "$RUNS"); do
        for i in "${!targets[@]}"; do
            IFS='|' read -r url body auth conns cpu <<<"${targets[$i]}"
            if [ -n "$cpu" ]; then move_origin "$cpu"; fi
            results[i]+="$(wrk_once "$url" "$body" "$auth" "$conns")"$'\n'
            if [ -n "$cpu" ]; then move_origin 1; fi
        done
    done
    for i in "${!targets[@]}"; do
        printf '%s' "${results[i]}" | sort -g -k1 | sed -n "$(( (RUNS + 1) / 2 ))p"
    done
}

MG=http://127.0.0.1:$PORT_mg
MGPASS=http://127.0.0.1:$PORT_mgpass
NG=http://127.0.0.1:$NGINX_PORT
NGT=http://127.0.0.1:$NGINX_TUNED_PORT
NGPASS=http://127.0.0.1:$NGINX_PASS_PORT
DIRECT_AUTH="Basic $BASIC"

# Warm both caches (and check they answer the same bytes).
fetch() { # url file
    local status
    status=$(curl -sS -o "$2" -w '%{http_code}' "$1")
    [ "$status" = 200 ] || { say "$1 answered $status: $(head -c 300 "$2")"; tail -n 5 "$WORK"/*.err "$WORK"/nginx/error.log >&2; exit 1; }
}
for base in "$MG" "$NG"; do
    fetch "$base$METADATA" "$WORK/warm.json"
    fetch "$base$CONTENT" "$WORK/warm.bin"
    cmp -s "$WORK/warm.bin" "$WORK/1m.png" || { say "$base served different content bytes"; exit 1; }
done

BAREURL=http://127.0.0.1:$BARE_PORT
say "1/5 metadata, cache hits"
{ read -r META_MG; read -r META_NG; read -r META_BARE; read -r META_FLOOR; } < <(
    measure "$MG$METADATA" "$NG$METADATA" "$BAREURL$METADATA" "http://127.0.0.1:$FLOOR_PORT$METADATA")
say "2/5 metadata, passed through"
{ read -r PASS_MG; read -r PASS_NG; read -r PASS_BARE; read -r PASS_DIRECT; } < <(
    measure "$MGPASS$METADATA" "$NGPASS$METADATA" \
        "http://127.0.0.1:$BARE_PASS_PORT$METADATA||$DIRECT_AUTH" "$ORIGIN$METADATA||$DIRECT_AUTH")
say "3/5 1 MiB content, cache hits"
{ read -r CONT_MG; read -r CONT_NG; } < <(measure "$MG$CONTENT" "$NG$CONTENT")
say "4/5 uploads: 1 MiB and 4 KiB"
{ read -r UP_MG; read -r UP_NG; read -r UP_NGT; read -r UP_BARE; read -r UP_DIRECT; } < <(
    measure "$MG$UPLOAD|$WORK/1m.png||8" "$NG$UPLOAD|$WORK/1m.png||8" \
        "$NGT$UPLOAD|$WORK/1m.png||8" "$BAREURL$UPLOAD|$WORK/1m.png|$DIRECT_AUTH|8" \
        "$ORIGIN$UPLOAD|$WORK/1m.png|$DIRECT_AUTH|8")
# The reference (pingora alone) passes uploads through with the client's credentials.
{ read -r SMALL_MG; read -r SMALL_NGT; read -r SMALL_BARE; read -r SMALL_DIRECT; } < <(
    measure "$MG$UPLOAD|$WORK/4k.png||8" "$NGT$UPLOAD|$WORK/4k.png||8" \
        "$BAREURL$UPLOAD|$WORK/4k.png|$DIRECT_AUTH|8" "$ORIGIN$UPLOAD|$WORK/4k.png|$DIRECT_AUTH|8")
# Latency one request at a time, so that queueing does not hide what each hop adds. Direct to
# the origin twice: on CPU 1, where the direct path never leaves wrk's core, and on CPU 0, one
# crossing between the cores away from wrk as it is from the proxies: the proxied latency less
# that one is what the proxy's hop adds (README, "Latency and busy polling").
{ read -r LAT_MG; read -r LAT_POLL; read -r LAT_NGT; read -r LAT_BARE; read -r LAT_DIRECT
  read -r FAR_DIRECT; } < <(
    measure "$MG$UPLOAD|$WORK/4k.png||1" "http://127.0.0.1:$PORT_mgpoll$UPLOAD|$WORK/4k.png||1" \
        "$NGT$UPLOAD|$WORK/4k.png||1" \
        "$BAREURL$UPLOAD|$WORK/4k.png|$DIRECT_AUTH|1" "$ORIGIN$UPLOAD|$WORK/4k.png|$DIRECT_AUTH|1" \
        "$ORIGIN$UPLOAD|$WORK/4k.png|$DIRECT_AUTH|1|0")

say "5/5 peak RSS, 64 concurrent 50 MiB uploads"
start_mediagate mgrss 256MiB
RSS_LOAD=$(wrk_once "http://127.0.0.1:$PORT_mgrss$UPLOAD" "$WORK/50m.png" "" 64)
PEAK_KIB=$(awk '/VmHWM/ {print $2}' "/proc/$PID_mgrss/status")

# --- the report ----------------------------------------------------------------------------------
python3 - "$OUT" <<PY
import sys, datetime, math, platform, subprocess
out = sys.argv[1]
def row(s): 
    rps, p50, p99, busy, err = s.split(" ", 4)
    return float(rps), float(p50), float(p99), err, float(busy)
MIB = 1024 * 1024
meta_mg, meta_ng, meta_bare, meta_floor = row("$META_MG"), row("$META_NG"), row("$META_BARE"), row("$META_FLOOR")
pass_mg, pass_ng, pass_bare, pass_direct = row("$PASS_MG"), row("$PASS_NG"), row("$PASS_BARE"), row("$PASS_DIRECT")
cont_mg, cont_ng = row("$CONT_MG"), row("$CONT_NG")
up_mg, up_ng, up_ngt, up_bare, up_direct = row("$UP_MG"), row("$UP_NG"), row("$UP_NGT"), row("$UP_BARE"), row("$UP_DIRECT")
small_mg, small_ngt, small_bare, small_direct = row("$SMALL_MG"), row("$SMALL_NGT"), row("$SMALL_BARE"), row("$SMALL_DIRECT")
lat_mg, lat_poll, lat_ngt, lat_bare, lat_direct = row("$LAT_MG"), row("$LAT_POLL"), row("$LAT_NGT"), row("$LAT_BARE"), row("$LAT_DIRECT")
far_direct = row("$FAR_DIRECT")
# p50 added (µs) over direct to the origin on wrk's core, and over direct to the origin one
# crossing away (the proxy's own hop).
added = lambda r: (r[1] - lat_direct[1]) * 1000
hop = lambda r: (r[1] - far_direct[1]) * 1000
# CPU 0 (the server under test's core) in the median run: busy share, per request (µs), per
# GB (s).
core_mg, core_poll = lat_mg[4], lat_poll[4]
mbs = lambda r: r[0] * MIB / 1e6
cpu_per_request = lambda r: r[4] / r[0] * 1e6
cpu_per_gb = lambda r: r[4] / (mbs(r) / 1000)
rss_load = row("$RSS_LOAD")
peak_mib = int("$PEAK_KIB") / 1024
def ok(cond): return "met" if cond else "**missed**"
# Ratios are shown cut, not rounded, to two decimals: a ratio of 0.997 shows as 0.99 beside
# "missed" rather than as 1.00 beside it.
def ratio(a, b): return f"{math.floor(a / b * 100) / 100:.2f}"
def cmd(c): return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip() or subprocess.run(c, shell=True, capture_output=True, text=True).stderr.strip()
cpu = cmd("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
lines = [
"# mediagate against nginx",
"",
f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()}: {cpu}, {cmd('nproc')} cores, Linux {platform.release()}.",
f"{cmd('$BIN --version') or 'mediagate'} (profile production with PGO, scripts/build-production; the reference: profile production), {cmd('nginx -v 2>&1')}, {cmd('wrk -v 2>&1 | head -1').split(' Copyright')[0]}.",
"",
"Each server under test has one worker pinned to CPU 0 (mediagate \`server.threads: 1\`, nginx",
"\`worker_processes 1\`); wrk and the origin run on CPU 1 (the origin moved to CPU 0 for the",
"runs of one latency target, below). Each figure is the median of $RUNS runs",
f"of $DURATION s, the servers of a scenario taking turns run by run; ratios are mediagate / nginx",
"from this run. The reference is pingora alone (benches/load/bare_pingora.rs) on the same core,",
"built without PGO: pingora's own cost, before mediagate's features and before PGO. Its floor",
"(the same process) answers each read with the metadata JSON from \`request_filter\`: pingora's",
"HTTP/1 server and nothing else, no cache lookup. Errors are",
"non-2xx answers and socket errors wrk counted (0 expected). The 4 KiB latency runs also",
"measure a second mediagate, the same but with \`server.busy_poll: 200us\` (its workers poll",
"for 200 µs after each request event instead of sleeping at once: README, Latency and busy polling).",
"CPU times are CPU 0's busy time (user, system, interrupts and softirqs, from /proc/stat; only",
"the server being measured is busy there) in the median run: where CPU 1 (wrk and the origin)",
"sets the pace, as in pass-through and 1 MiB uploads, they tell what each server spends below",
"that ceiling; on cache hits, where each server keeps CPU 0 busy, what a hit costs it.",
"",
"| scenario | mediagate | nginx | ratio | goal |",
"| --- | --- | --- | --- | --- |",
f"| metadata (~700 B JSON), cache hit, $CLIENTS connections: requests/s | {meta_mg[0]:,.0f} | {meta_ng[0]:,.0f} | {ratio(meta_mg[0], meta_ng[0])} | ≥ 1.2: {ok(meta_mg[0] >= 1.2*meta_ng[0])} |",
f"| same, p99 latency (ms) | {meta_mg[2]:.2f} | {meta_ng[2]:.2f} | | |",
f"| same, CPU 0 time per hit (µs; lower is cheaper); reference, floor: {cpu_per_request(meta_bare):.1f}, {cpu_per_request(meta_floor):.1f} | {cpu_per_request(meta_mg):.1f} | {cpu_per_request(meta_ng):.1f} | {ratio(cpu_per_request(meta_mg), cpu_per_request(meta_ng))} | |",
f"| same, reference: pingora alone over the same cache storage, no mediagate features (requests/s; ratio to nginx) | {meta_bare[0]:,.0f} | | {ratio(meta_bare[0], meta_ng[0])} | mediagate / reference: {ratio(meta_mg[0], meta_bare[0])} |",
f"| same, pingora's floor: the same JSON answered from \`request_filter\`, no cache, nothing else (requests/s; ratio to nginx) | {meta_floor[0]:,.0f} | | {ratio(meta_floor[0], meta_ng[0])} | mediagate / floor: {ratio(meta_mg[0], meta_floor[0])} |",
f"| metadata passed through (no cache): requests/s | {pass_mg[0]:,.0f} | {pass_ng[0]:,.0f} | {ratio(pass_mg[0], pass_ng[0])} | ≥ 1.0: {ok(pass_mg[0] >= pass_ng[0])} |",
f"| same, direct to the origin (ceiling): requests/s | | | {pass_direct[0]:,.0f} | |",
f"| same, CPU 0 time per request (µs; lower is cheaper) | {cpu_per_request(pass_mg):.1f} | {cpu_per_request(pass_ng):.1f} | {ratio(cpu_per_request(pass_mg), cpu_per_request(pass_ng))} | |",
f"| same, reference (pingora alone, no cache): requests/s; CPU 0 time per request (µs) | {pass_bare[0]:,.0f}; {cpu_per_request(pass_bare):.1f} | | | mediagate / reference, CPU per request: {ratio(cpu_per_request(pass_mg), cpu_per_request(pass_bare))} |",
f"| 1 MiB content, cache hit: MB/s | {mbs(cont_mg):,.0f} | {mbs(cont_ng):,.0f} | {ratio(cont_mg[0], cont_ng[0])} | ≥ 1.0: {ok(cont_mg[0] >= cont_ng[0])} |",
f"| 1 MiB uploads, 8 connections, policy and quotas on: MB/s | {mbs(up_mg):,.0f} | {mbs(up_ng):,.0f} (defaults), {mbs(up_ngt):,.0f} (64 KiB buffers) | {ratio(up_mg[0], up_ngt[0])} (vs tuned) | ≥ 1.0 vs tuned: {ok(up_mg[0] >= up_ngt[0])} |",
f"| same, direct to the origin (ceiling): MB/s | | | {mbs(up_direct):,.0f} | |",
f"| same, reference (pingora alone, no policy): MB/s | {mbs(up_bare):,.0f} | | | mediagate / reference: {ratio(up_mg[0], up_bare[0])} |",
f"| same, CPU 0 time per GB uploaded (s; lower is cheaper); reference: {cpu_per_gb(up_bare):.2f} | {cpu_per_gb(up_mg):.2f} | {cpu_per_gb(up_ng):.2f} (defaults), {cpu_per_gb(up_ngt):.2f} (64 KiB buffers) | {ratio(cpu_per_gb(up_mg), cpu_per_gb(up_ngt))} (vs tuned) | |",
f"| 4 KiB uploads, 8 connections: requests/s | {small_mg[0]:,.0f} | {small_ngt[0]:,.0f} (64 KiB buffers) | {ratio(small_mg[0], small_ngt[0])} | |",
f"| same, reference (pingora alone, no policy): requests/s | {small_bare[0]:,.0f} | | | mediagate / reference: {ratio(small_mg[0], small_bare[0])} |",
f"| same, direct to the origin (ceiling): requests/s | | | {small_direct[0]:,.0f} | |",
f"| 4 KiB uploads one at a time, p50 / p99 (ms); direct: {lat_direct[1]:.3f} / {lat_direct[2]:.3f} | {lat_mg[1]:.3f} / {lat_mg[2]:.3f} | {lat_ngt[1]:.3f} / {lat_ngt[2]:.3f} | | |",
f"| 4 KiB uploads, p50 added over direct (µs) | {added(lat_mg):.0f} | {added(lat_ngt):.0f} | | < 150: {ok(added(lat_mg) < 150)} |",
f"| same, over direct to the origin moved to CPU 0 (p50 {far_direct[1]:.3f} / p99 {far_direct[2]:.3f} ms), one crossing between the cores away from wrk as from the proxy: the proxy's own hop (µs) | {hop(lat_mg):.0f} | {hop(lat_ngt):.0f} | | < 150: {ok(hop(lat_mg) < 150)} |",
f"| same, mediagate with \`server.busy_poll: 200us\` (p50 / p99 {lat_poll[1]:.3f} / {lat_poll[2]:.3f} ms), added over direct; CPU 0 busy in the median runs, default then busy polling | {added(lat_poll):.0f} | | {core_mg:.0%} / {core_poll:.0%} of a core | < 150: {ok(added(lat_poll) < 150)} |",
f"| same, reference (pingora alone, no policy): p50 added over direct; its own hop (µs) | {added(lat_bare):.0f}; {hop(lat_bare):.0f} | | | mediagate - reference: {(lat_mg[1]-lat_bare[1])*1000:.0f} µs |",
f"| peak RSS during 64 concurrent 50 MiB uploads (MiB) | {peak_mib:.1f} | | | < 128: {ok(peak_mib < 128)} |",
"",
"Errors seen by wrk (non-2xx, socket): " + ", ".join(f"{n} {r[3]}" for n, r in [("meta mg", meta_mg), ("meta nginx", meta_ng), ("meta reference", meta_bare), ("meta floor", meta_floor), ("pass mg", pass_mg), ("pass nginx", pass_ng), ("pass reference", pass_bare), ("pass direct", pass_direct), ("content mg", cont_mg), ("content nginx", cont_ng), ("upload mg", up_mg), ("upload nginx", up_ng), ("upload nginx tuned", up_ngt), ("upload reference", up_bare), ("upload direct", up_direct), ("4k mg", small_mg), ("4k nginx", small_ngt), ("4k reference", small_bare), ("4k direct", small_direct), ("4k mg, 1 conn", lat_mg), ("4k mg busy_poll, 1 conn", lat_poll), ("4k nginx, 1 conn", lat_ngt), ("4k reference, 1 conn", lat_bare), ("4k direct, 1 conn", lat_direct), ("4k direct, 1 conn, origin on CPU 0", far_direct), ("50 MiB mg", rss_load)]) + ".",
"",
"Rerun: \`benches/load/compare.sh\` (RUNS, DURATION, CLIENTS override the defaults). nginx's",
"configuration is config/nginx/compare.conf and config/nginx/common.conf.",
"",
"The commands of this run, each once, in order (the script runs each load $RUNS times; \`\$WORK\`",
"is its workspace on tmpfs, ports are picked at run time, \`\$ACCOUNT\`/\`\$TOKEN\` are the fixture",
"account of benches/load/common.sh and \`\$BASIC\` their Basic encoding, \`\$ORIGIN_PID\` the origin's",
"process; each mediagate's",
"configuration is what \`mediagate_config\` in common.sh writes for the arguments shown):",
"",
"\`\`\`sh",
*dict.fromkeys(open("$WORK/commands").read().splitlines()),
"\`\`\`",
]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
# What was changed for these figures, and what each change did, is kept by hand beside the script.
if [ -f benches/load/changes.md ]; then
    { echo; cat benches/load/changes.md; } >>"$OUT"
fi
