# Shell helpers shared by the project's scripts. Source it: `. scripts/lib.sh` (from the
# repository root, as every script cds there first).

# apt_ensure WHO PKG...: install the Debian packages among PKG that are not installed yet (with
# sudo when not root); WHO names the caller in the message.
apt_ensure() {
  local who=$1
  shift
  local missing=() p sudo=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "$who: installing ${missing[*]}" >&2
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# free_port: a free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# free_ports N: N distinct free TCP ports on 127.0.0.1, one a line (all bound at once, so no two
# are the same; a port may still be taken by someone else before its user binds it).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
    s.close()
PY
}

# stop_pid WHO PID: stop a server gracefully (SIGTERM, up to 30 s), then SIGKILL it; reap it.
# Nothing happens when PID is empty or gone.
stop_pid() {
  local who=$1 pid=$2
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$who: server $pid ignored SIGTERM for 30 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# cpu_has_avx512: the AVX-512 subsets FAISS's avx512 build needs (F, CD, VL, DQ, BW).
cpu_has_avx512() {
  local f
  for f in avx512f avx512cd avx512vl avx512dq avx512bw; do
    grep -qw "$f" /proc/cpuinfo || return 1
  done
}

# disk_report WHO: free space where the build (target/) and the tests' temporary stores (TMPDIR)
# live, and the size of target/, on stderr. A run that dies of ENOSPC then says how close it was.
disk_report() {
  local who=$1 tmp=${TMPDIR:-/tmp} target=${CARGO_TARGET_DIR:-target} size=0
  [ -d "$target" ] && size=$(du -sm "$target" 2>/dev/null | cut -f1)
  echo "$who: target/ ${size} MiB; free: $(df -Pm "$PWD" | awk 'NR==2 {print $4}') MiB here," \
    "$(df -Pm "$tmp" | awk 'NR==2 {print $4}') MiB in $tmp" >&2
}
