#!/usr/bin/env bash
# The cost of waking a process on the other core, on this machine: a one-byte TCP ping-pong on
# loopback (benches/load/wakeup.rs), 5,000 rounds 200 µs apart, with both ends on CPU 1, with
# the echoing end on CPU 0, and with it on CPU 0 polling instead of sleeping. Prints the round
# trip's median and 10th/90th percentiles in µs. About 10 s after the build.
#
#   benches/load/wakeup.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/load/common.sh
cargo build --release --quiet --example wakeup
BIN=target/release/examples/wakeup
ROUNDS=${ROUNDS:-5000}
# The echoing ends are ended with the script, however it ends (common.sh).
start_workspace

round_trip() { # label echo_cpu ping_cpu [--poll]
    local port
    port=$(free_port)
    taskset -c "$2" "$BIN" echo "127.0.0.1:$port" ${4:-} &
    PIDS+=($!)
    printf '%-46s %s\n' "$1" "$(taskset -c "$3" "$BIN" ping "127.0.0.1:$port" "$ROUNDS")"
}

round_trip "both ends on CPU 1" 1 1
round_trip "echo on CPU 0, ping on CPU 1" 0 1
round_trip "echo on CPU 0 polling, ping on CPU 1" 0 1 --poll
