#!/usr/bin/env bash
# Run a command inside a memory cgroup (cgroup v1 memory controller), so that "fits in N GiB"
# is measured, not estimated: the kernel counts the process's anonymous memory *and* its page
# cache (the memory-mapped fp16 templates, the index files) against the limit, reclaims cache
# under it, and OOM-kills the process if anonymous memory alone does not fit.
#
#   scripts/memcap.sh LIMIT [--report FILE] -- COMMAND [ARGS...]
#
# LIMIT: bytes, or with a suffix K/M/G (binary: 2.5G = 2.5 GiB). Needs root and the v1 memory
# controller at /sys/fs/cgroup/memory (this project's machines have both). Swap is not counted:
# run on a machine without swap (or the cap is not a cap).
#
# While the command runs, memory.stat is sampled every 0.5 s. On exit one JSON line goes to
# stderr (and to FILE with --report): the limit, the peak usage the kernel recorded
# (memory.max_usage_in_bytes: anon + cache), the peak anonymous memory (rss) and page cache
# sampled, the number of times the limit was hit (failcnt), whether the OOM killer fired, and
# the command's exit status. The cgroup is removed afterwards. Exit status: the command's.
set -euo pipefail

usage() {
  echo "usage: scripts/memcap.sh LIMIT [--report FILE] -- COMMAND [ARGS...]" >&2
  exit 2
}

[ $# -ge 3 ] || usage
limit_arg=$1
shift
report=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case $1 in
    --report) report=$2; shift 2 ;;
    *) usage ;;
  esac
done
[ "${1:-}" = "--" ] || usage
shift
[ $# -ge 1 ] || usage

limit=$(python3 - "$limit_arg" <<'EOF'
import sys
s = sys.argv[1].strip().upper()
mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
try:
    v = float(s[:-1]) * mult[s[-1]] if s[-1] in mult else float(s)
except (ValueError, IndexError):
    sys.exit(f"memcap: LIMIT must be bytes or a number with K/M/G; got {sys.argv[1]!r}")
if v < (64 << 20):
    sys.exit("memcap: a limit under 64 MiB cannot hold a biomatch process")
print(int(v))
EOF
)

root=/sys/fs/cgroup/memory
if [ ! -w "$root" ]; then
  echo "memcap: $root is not writable (needs root and the cgroup v1 memory controller)" >&2
  exit 2
fi
if [ "$(awk '$3 == "swap" {n++} END {print n+0}' /proc/swaps)" -gt 0 ] 2>/dev/null; then
  echo "memcap: warning: swap is on; anonymous memory over the cap goes to swap" >&2
fi
cg="$root/biomatch-memcap-$$"
mkdir "$cg"
cleanup() {
  # Move anything left back to the root group, then remove ours.
  if [ -d "$cg" ]; then
    while read -r p; do echo "$p" >"$root/cgroup.procs" 2>/dev/null || true; done <"$cg/cgroup.procs"
    rmdir "$cg" 2>/dev/null || true
  fi
}
trap cleanup EXIT
echo "$limit" >"$cg/memory.limit_in_bytes"
# Start from an empty page cache for the measurement's own files: what the command needs it
# reads under the cap.
sync
echo 1 >/proc/sys/vm/drop_caches || true

samples=$(mktemp)
# The command runs in a child shell that first moves itself into the cgroup.
(
  echo $BASHPID >"$cg/cgroup.procs"
  exec "$@"
) &
pid=$!
# A signal to this script (a test harness stopping "the server") goes to the command, whose
# exit this script still waits for and reports.
forward() { kill -"$1" "$pid" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP
(
  while kill -0 "$pid" 2>/dev/null; do
    awk '$1 == "total_rss" || $1 == "total_cache" || $1 == "total_mapped_file" {printf "%s=%s ", $1, $2} END {print ""}' \
      "$cg/memory.stat" 2>/dev/null >>"$samples" || true
    sleep 0.5
  done
) &
sampler=$!
set +e
# `wait` returns early when a trapped signal arrives: wait until the command is gone.
while :; do
  wait "$pid"
  status=$?
  kill -0 "$pid" 2>/dev/null || break
done
set -e
wait "$sampler" 2>/dev/null || true

line=$(python3 - "$cg" "$limit" "$status" "$samples" "$*" <<'EOF'
import json, sys
cg, limit, status, samples, cmd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def read(name):
    try:
        return int(open(f"{cg}/{name}").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
peak = {"total_rss": 0, "total_cache": 0, "total_mapped_file": 0}
n = 0
for line in open(samples):
    fields = dict(kv.split("=") for kv in line.split() if "=" in kv)
    if fields:
        n += 1
    for k in peak:
        if k in fields:
            peak[k] = max(peak[k], int(fields[k]))
oom = None
try:
    for l in open(f"{cg}/memory.oom_control"):
        if l.startswith("oom_kill "):
            oom = int(l.split()[1])
except OSError:
    pass
print(json.dumps({
    "memcap": {
        "limit_bytes": limit,
        "max_usage_bytes": read("memory.max_usage_in_bytes"),
        "peak_rss_bytes": peak["total_rss"],
        "peak_cache_bytes": peak["total_cache"],
        "peak_mapped_file_bytes": peak["total_mapped_file"],
        "samples": n,
        "failcnt": read("memory.failcnt"),
        "oom_kills": oom,
        "exit_status": status,
        "command": cmd,
    }
}))
EOF
)
rm -f "$samples"
echo "$line" >&2
[ -z "$report" ] || echo "$line" >"$report"
exit "$status"
