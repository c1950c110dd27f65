# Shared by compare.sh, instructions.sh and scripts/build-production (sourced, not run).

# The account the scripts give their local origin, and the service they upload to: made up,
# all zeros, nothing real.
ACCOUNT=AC00000000000000000000000000000000
TOKEN=load-token
SERVICE=IS0123456789abcdef0123456789abcdef

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# mediagate as the load runs measure it: one thread, every feature on, limits out of the way.
# Uses ORIGIN (set by the caller), ACCOUNT and TOKEN.
mediagate_config() { # listen_port metrics_port cache_memory [more server keys, e.g. "busy_poll: 200us"]
    cat <<YAML
server:
  listen: 127.0.0.1:$1
  metrics_listen: 127.0.0.1:$2
  threads: 1
  grace_period: 1s
  ${4:-}
upstream:
  url: $ORIGIN
credentials:
  username: $ACCOUNT
  password: $TOKEN
uploads:
  max_size: 150MiB
  sniff: true
quotas:
  uploads_per_minute: 100000000
  bytes_per_hour: 1000TiB
  concurrent_uploads: 10000
cache:
  memory: $3
YAML
}

# A work directory for the run (WORK) and the processes started in it (PIDS): both go when the
# script ends, however it ends. The servers read their stdin from the fifo "$WORK/alive", which
# this shell holds open, and exit when it closes (`--exit-with-parent`).
start_workspace() { # mktemp -d arguments
    WORK=$(mktemp -d "$@")
    PIDS=()
    trap end_workspace EXIT
    mkfifo "$WORK/alive"
    exec 9<>"$WORK/alive"
}

end_workspace() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
