#!/usr/bin/env bash
# Instructions per metadata cache hit, counted by callgrind: mediagate (every feature on, as in
# compare.sh), the reference (benches/load/bare_pingora.rs: pingora and pingora-cache over the
# same storage, nothing else) and pingora's floor (the same JSON answered from `request_filter`,
# no cache at all); then per metadata read passed through to the origin with no cache, by
# mediagate and by the reference. Unlike requests/s on a shared VM, the count hardly moves from run
# to run (mediagate's takes one of two values about 950 apart: run it a few times), so it shows
# what a change to the hit path does. Counted: user-space instructions inside
# pingora's `process_new_http` (one request, from reading its head to logging it); not the kernel.
#
#   benches/load/instructions.sh          # N=2000 reads each, about two minutes after the build
#   KEEP=/tmp/cg benches/load/instructions.sh   # and keep callgrind's files for callgrind_annotate
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
. benches/load/common.sh
N=${N:-2000}

command -v valgrind >/dev/null || {
    sudo=; [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get install -y -qq valgrind >/dev/null
}
cargo build --release --quiet --bin mediagate --example bare_pingora
BIN=$ROOT/target/release/mediagate
BARE=$ROOT/target/release/examples/bare_pingora

start_workspace

"$BIN" origin --listen 127.0.0.1:0 --data "$WORK/store" --account-sid "$ACCOUNT" \
    --auth-token "$TOKEN" --exit-with-parent <"$WORK/alive" >"$WORK/origin.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do grep -q "listening on" "$WORK/origin.out" && break; sleep 0.05; done
ORIGIN=$(grep -o 'http://[0-9.:]*' "$WORK/origin.out" | head -1)
MEDIA=$(printf '\x89PNG\r\n\x1a\n%01000d' 0 | curl -fsS -u "$ACCOUNT:$TOKEN" \
    -H 'Content-Type: image/png' --data-binary @- "$ORIGIN/v1/Services/$SERVICE/Media" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["sid"])')
METADATA=/v1/Services/$SERVICE/Media/$MEDIA

# Sends N keep-alive reads once the server answers; the first (with credentials) fills the cache.
# With an Authorization value, every read carries it (the reference injects no credentials).
hits() { # port [authorization]
    for _ in $(seq 600); do
        curl -fsS -o /dev/null -u "$ACCOUNT:$TOKEN" "http://127.0.0.1:$1$METADATA" 2>/dev/null && break
        sleep 0.1
    done
    python3 - "$1" "$METADATA" "$N" "${2:-}" <<'PY'
import http.client, sys
port, path, n, auth = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
headers = {"Authorization": auth} if auth else {}
connection = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    connection.request("GET", path, headers=headers)
    answer = connection.getresponse()
    answer.read()
    assert answer.status == 200, answer.status
PY
}

# Runs a server under callgrind, sends it its reads, stops it; prints instructions per request.
count() { # name port authorization command...
    local name=$1 port=$2 auth=$3 out="$WORK/$1.callgrind"
    shift 3
    valgrind --tool=callgrind --callgrind-out-file="$out" --toggle-collect='*process_new_http*' \
        "$@" <"$WORK/alive" >/dev/null 2>"$WORK/$name.valgrind" &
    local pid=$!
    PIDS+=($pid)
    hits "$port" "$auth"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    local total
    total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$out" "$KEEP/"
    # N reads and the one before them (which fills the cache, where there is one).
    echo "$name: $((total / (N + 1))) instructions per request ($total over $((N + 1)))"
}

BASIC="Basic $(printf '%s:%s' "$ACCOUNT" "$TOKEN" | base64 -w0)"
MG_PORT=$(free_port)
mediagate_config "$MG_PORT" "$(free_port)" 64MiB >"$WORK/mediagate.yaml"
count mediagate "$MG_PORT" "" "$BIN" proxy --config "$WORK/mediagate.yaml" --exit-with-parent
BARE_PORT=$(free_port)
count reference "$BARE_PORT" "" "$BARE" "127.0.0.1:$BARE_PORT" "${ORIGIN#http://}"
# pingora's floor (the reference's third service): the JSON answered from `request_filter`.
curl -fsS -u "$ACCOUNT:$TOKEN" -o "$WORK/floor.json" "$ORIGIN$METADATA"
FLOOR_PORT=$(free_port)
count floor "$FLOOR_PORT" "" "$BARE" "127.0.0.1:$(free_port)" "${ORIGIN#http://}" \
    "127.0.0.1:$(free_port)" "127.0.0.1:$FLOOR_PORT" "$WORK/floor.json"
# Pass-through, no cache: every read goes to the origin (whose own work, in another process,
# is not counted). mediagate with its cache off injects the credentials; the reference's second
# service passes the client's.
PASS_PORT=$(free_port)
mediagate_config "$PASS_PORT" "$(free_port)" 0 >"$WORK/pass.yaml"
count mediagate-pass "$PASS_PORT" "" "$BIN" proxy --config "$WORK/pass.yaml" \
    --exit-with-parent
BARE_PASS_PORT=$(free_port)
count reference-pass "$BARE_PASS_PORT" "$BASIC" "$BARE" "127.0.0.1:$(free_port)" \
    "${ORIGIN#http://}" "127.0.0.1:$BARE_PASS_PORT"
