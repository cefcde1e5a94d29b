#!/usr/bin/env bash
# Slow clients against `biomatch serve` on loopback: does a well-behaved client keep its latency
# while 100 slow-body and 100 slow-header connections dribble bytes, and are the slow ones closed
# within the configured timeouts?
#
#   scripts/slow-clients.sh            # release build (PROFILE=dev for the test profile)
#
# Starts the service on a temporary data directory (templates only, limits.max_concurrent = 32
# as in issue 11's measurement, every other [limits] key at its default: header_read_timeout_ms
# 5000, body_timeout_ms 10000, body_grace_ms 2000, body_min_bytes_per_s 16384), then runs
# scripts/slow-clients.py: 100 clients announce a 100 000-byte verify body and send a byte every
# 0.5 s, 100 send a request head a byte a second (each reconnecting at once when closed, so 200
# slow connections stay open all along), while one client runs verify requests on a keep-alive
# connection for 15 s. Prints one JSON object (the good client's p50/p99 and status
# counts; how many slow connections were closed, when and with which status). The server is
# stopped with SIGTERM on exit; its log is in the temporary directory printed first.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1
profile=${PROFILE:-release}
cargo build --locked --profile "$profile" -p biomatch-matcher
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
bin=target/$dir/biomatch
py=python3
[ -x .setup/venv/bin/python3 ] && py=.setup/venv/bin/python3

tmp=$(mktemp -d)
echo "slow-clients: data and log in $tmp" >&2
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$tmp/biomatch.toml" <<TOML
listen = "127.0.0.1:$port"
[limits]
max_concurrent = 32
request_timeout_ms = 10000
body_bytes = 4194304
retry_after_s = 1
max_gallery_subset = 100000
[extractors.face]
enabled = false
[[models]]
id = "synthetic-face@1"
dim = 128
modality = "face"
calibration = "calibration/synthetic-face@1.json"
TOML

# Room for 200 slow connections, the good one and the server's own descriptors.
ulimit -n 4096 || true
"$bin" serve --config "$tmp/biomatch.toml" --data "$tmp/store" >"$tmp/server.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$tmp/server.log" >&2; exit 1; }
  sleep 0.1
done
"$py" scripts/slow-clients.py --port "$port" "$@"
t0=$(date +%s.%N)
kill -TERM $pid
wait $pid || { echo "slow-clients: server exit status $?" >&2; exit 1; }
trap - EXIT
echo "slow-clients: SIGTERM to exit: $(echo "$(date +%s.%N) - $t0" | bc) s" >&2
