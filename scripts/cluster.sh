#!/usr/bin/env bash
# A local biomatch cluster on loopback for tests and benches: an etcd cluster (cluster metadata), a
# NATS cluster with JetStream (the replicated enrollment log) and N biomatch nodes in cluster mode,
# all plain processes (not the Debian packages' system services) on free 127.0.0.1 ports, every
# file under DIR.
#
#   scripts/cluster.sh up DIR [--nodes N] [--etcd-members M] [--nats-members M] [--shards S]
#                             [--replication R] [--bin PATH]
#       start M etcd members (default 3, static bootstrap, heartbeat 100 ms, election timeout
#       1 s), M NATS members (default 3, JetStream, one route mesh named `biomatch`), then N
#       nodes (default 3; 0 starts etcd and NATS only) with S shards (12) replicated R times (2);
#       PATH defaults to ${BIOMATCH_BIN:-target/release/biomatch}, built with cargo when it is
#       target/release/biomatch and missing. DIR must be absent or empty. Exits 0 once every etcd
#       member answers `etcdctl endpoint health`, every NATS member's monitoring port answers
#       /healthz?js-enabled-only=true and /healthz?js-server-only=true (JetStream's meta group
#       has a leader), every node answers GET /readyz with 200 and node 0's GET
#       /v1/admin/cluster answers 200 with "accepting_writes": true. Limits: 30 s for etcd and
#       NATS, 120 s for the nodes; past one it says which part failed with the tail of its log
#       and exits 1, leaving everything running for inspection (`down` cleans up).
#   scripts/cluster.sh down DIR
#       stop the nodes (SIGTERM, SIGKILL after 10 s), then NATS, then etcd; idempotent; DIR's
#       files stay.
#   scripts/cluster.sh add-node DIR [--bin PATH]
#       start one more node (the next index) with the same cluster settings, add it to
#       nodes.json, wait (120 s) for its /readyz.
#   scripts/cluster.sh kill DIR node|etcd|nats INDEX     kill -9 that process (failure tests)
#   scripts/cluster.sh start DIR node|etcd|nats INDEX    start it again with the same config,
#       ports and data (an etcd member with --initial-cluster-state existing), and wait for its
#       health as `up` does (a node: /readyz only)
#
# DIR/nodes.json (written atomically; complete once `up` exits 0; extra fields may be added):
#   {"nodes": [{"id": "node-0", "url": "http://127.0.0.1:PORT", "pid_file": ABS, "config": ABS,
#               "log": ABS, ...}, ...],
#    "etcd":  [{"url": "http://127.0.0.1:PORT", "pid_file": ABS, ...}, ...],
#    "nats":  [{"url": "nats://127.0.0.1:PORT", "pid_file": ABS, "monitor": "http://127.0.0.1:PORT",
#               ...}, ...],
#    "shards": S, "replication": R, ...}
# Layout: DIR/etcd/<i>/{data/,etcd.log,pid}, DIR/nats/<i>/{nats.conf,js/,nats.log,pid},
# DIR/nodes/<i>/{biomatch.toml,data/,server.log,pid}. Nodes run with BIOMATCH_LOG (default
# info); BIOMATCH__* variables other than LISTEN, DATA and CLUSTER__* reach them too.
#
# Needs etcd, etcdctl and nats-server (scripts/setup.sh installs them). What NATS 2.9.10 has
# stored, and how durably, when JetStream acknowledges a message: docs/cluster-local.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

usage() {
  cat >&2 <<'EOF'
usage: scripts/cluster.sh up DIR [--nodes N] [--etcd-members M] [--nats-members M] [--shards S]
                                 [--replication R] [--bin PATH]
       scripts/cluster.sh down DIR
       scripts/cluster.sh add-node DIR [--bin PATH]
       scripts/cluster.sh kill DIR node|etcd|nats INDEX
       scripts/cluster.sh start DIR node|etcd|nats INDEX
EOF
  exit 2
}

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

[ $# -ge 2 ] || usage
cmd=$1
if [ "$cmd" = up ]; then
  mkdir -p -- "$2" || die "cannot create $2"
fi
if [ ! -d "$2" ]; then
  [ "$cmd" = down ] || die "$2: no such directory"
  echo "cluster.sh: no $2; nothing to stop" >&2
  exit 0
fi
dir=$(cd -- "$2" && pwd)
shift 2

ETCD_TIMEOUT=30
NATS_TIMEOUT=30
NODE_TIMEOUT=120
STOP_TIMEOUT=10

# --- process bookkeeping ------------------------------------------------------------------------

# alive PID: the process exists and is not a zombie (processes outlive this script, so their
# parent is whatever reaps orphans here, which may be slow to).
alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "${st%% *}" != Z ]
}

# ours PIDFILE NEEDLE: print the pid in PIDFILE when that process is alive and its command line
# has the argument NEEDLE (its config file or data dir), so that a reused pid is never signalled.
ours() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  [[ " $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) " == *" $2 "* ]] || return 1
  echo "$pid"
}

# stop_group PID...: SIGTERM them all, wait up to STOP_TIMEOUT s, SIGKILL the rest and
# wait until they are gone.
stop_group() {
  local pid left
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 1 $((STOP_TIMEOUT * 10))); do
    left=0
    for pid in "$@"; do alive "$pid" && left=1; done
    ((left)) || return 0
    sleep 0.1
  done
  for pid in "$@"; do
    if alive "$pid"; then
      echo "cluster.sh: $pid ignored SIGTERM for $STOP_TIMEOUT s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for _ in $(seq 1 100); do
    left=0
    for pid in "$@"; do alive "$pid" && left=1; done
    ((left)) || return 0
    sleep 0.1
  done
}

# http_ok URL [KEY]: GET URL answers 200 (and, with KEY, a JSON object whose KEY is true). With
# curl when there is one: it polls at a fraction of python's start-up cost.
http_ok() {
  local out code body
  if command -v curl >/dev/null; then
    out=$(curl -s --max-time 2 -w '\n%{http_code}' "$1" 2>/dev/null) || return 1
    code=${out##*$'\n'}
    body=${out%$'\n'*}
    [ "$code" = 200 ] || return 1
    [ $# -ge 2 ] || return 0
    [[ $body =~ \"$2\"[[:space:]]*:[[:space:]]*true ]] || return 1
    python3 -c 'import json, sys; sys.exit(0 if json.loads(sys.argv[1]).get(sys.argv[2]) is True else 1)' \
      "$body" "$2" 2>/dev/null
    return
  fi
  python3 - "$@" <<'PY' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    body = r.read()
    ok = r.status == 200
if ok and len(sys.argv) > 2:
    ok = json.loads(body).get(sys.argv[2]) is True
sys.exit(0 if ok else 1)
PY
}

# --- state: DIR/nodes.json ------------------------------------------------------------------------

# load_state: nodes.json into bash arrays (node_*, etcd_*, nats_*) and scalars.
load_state() {
  [ -f "$dir/nodes.json" ] || die "$dir/nodes.json not found: no cluster was brought up in $dir"
  eval "$(python3 - "$dir/nodes.json" <<'PY'
import json, shlex, sys
st = json.load(open(sys.argv[1]))
out = []
def arr(name, items, key):
    out.append("%s=(%s)" % (name, " ".join(shlex.quote(str(it.get(key, ""))) for it in items)))
for k in ["id", "url", "listen", "pid_file", "config", "log", "data", "dir"]:
    arr("node_" + k, st["nodes"], k)
for k in ["name", "url", "peer_url", "pid_file", "data_dir", "log"]:
    arr("etcd_" + k, st["etcd"], k)
for k in ["name", "url", "route_url", "monitor", "pid_file", "conf", "log", "dir"]:
    arr("nats_" + k, st["nats"], k)
for k in ["shards", "replication", "log_replicas", "bin", "etcd_token"]:
    out.append("%s=%s" % (k, shlex.quote(str(st.get(k, "")))))
print("\n".join(out))
PY
)"
}

# add_node_state: append node ${#node_id[@]} - 1 (the last one set in the arrays) to nodes.json.
add_node_state() {
  local i=$((${#node_id[@]} - 1))
  python3 - "$dir/nodes.json" "${node_id[i]}" "${node_url[i]}" "${node_listen[i]}" \
    "${node_pid_file[i]}" "${node_config[i]}" "${node_log[i]}" "${node_data[i]}" "${node_dir[i]}" <<'PY'
import json, os, sys
path = sys.argv[1]
st = json.load(open(path))
st["nodes"].append(dict(zip(["id", "url", "listen", "pid_file", "config", "log", "data", "dir"], sys.argv[2:])))
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(st, f, indent=2)
    f.write("\n")
os.replace(tmp, path)
PY
}

# new_node I PORT: the arrays' entry for node I on PORT.
new_node() {
  local i=$1 port=$2 d="$dir/nodes/$1"
  node_id[i]="node-$i"
  node_listen[i]="127.0.0.1:$port"
  node_url[i]="http://127.0.0.1:$port"
  node_dir[i]=$d
  node_pid_file[i]="$d/pid"
  node_config[i]="$d/biomatch.toml"
  node_log[i]="$d/server.log"
  node_data[i]="$d/data"
}

# --- etcd -----------------------------------------------------------------------------------------

start_etcd() {
  local i=$1 state=new initial="" j
  for j in "${!etcd_name[@]}"; do
    initial+="${initial:+,}${etcd_name[j]}=${etcd_peer_url[j]}"
  done
  [ -d "${etcd_data_dir[i]}/member" ] && state=existing
  mkdir -p "${etcd_data_dir[i]}"
  chmod 700 "${etcd_data_dir[i]}"
  etcd --name "${etcd_name[i]}" --data-dir "${etcd_data_dir[i]}" \
    --listen-client-urls "${etcd_url[i]}" --advertise-client-urls "${etcd_url[i]}" \
    --listen-peer-urls "${etcd_peer_url[i]}" --initial-advertise-peer-urls "${etcd_peer_url[i]}" \
    --initial-cluster "$initial" --initial-cluster-token "$etcd_token" \
    --initial-cluster-state "$state" \
    --heartbeat-interval 100 --election-timeout 1000 \
    --logger zap --log-outputs stderr \
    </dev/null >>"${etcd_log[i]}" 2>&1 &
  echo $! >"${etcd_pid_file[i]}"
}

etcd_ready() {
  ETCDCTL_API=3 etcdctl --endpoints "${etcd_url[$1]}" --dial-timeout 1s --command-timeout 2s \
    endpoint health >/dev/null 2>&1
}

# --- NATS -----------------------------------------------------------------------------------------

write_nats_conf() {
  local i=$1 j port mport rport routes=""
  port=${nats_url[i]##*:}
  mport=${nats_monitor[i]##*:}
  rport=${nats_route_url[i]##*:}
  for j in "${!nats_route_url[@]}"; do
    routes+="    ${nats_route_url[j]}"$'\n'
  done
  mkdir -p "${nats_dir[i]}/js"
  {
    cat <<EOF
# Generated by scripts/cluster.sh. NATS 2.9 has no jetstream sync_interval (2.10 added it; 2.9
# rejects the field): messages are written to the OS before they are acknowledged and fsynced
# every 2 minutes, see docs/cluster-local.md.
server_name: ${nats_name[i]}
listen: 127.0.0.1:$port
http: 127.0.0.1:$mport
jetstream {
  store_dir: "${nats_dir[i]}/js"
}
EOF
    if ((${#nats_name[@]} > 1)); then
      cat <<EOF
cluster {
  name: biomatch
  listen: 127.0.0.1:$rport
  routes: [
$routes  ]
}
EOF
    fi
  } >"${nats_conf[i]}"
}

start_nats() {
  local i=$1
  nats-server -c "${nats_conf[i]}" </dev/null >>"${nats_log[i]}" 2>&1 &
  echo $! >"${nats_pid_file[i]}"
}

nats_ready() {
  http_ok "${nats_monitor[$1]}/healthz?js-enabled-only=true" &&
    http_ok "${nats_monitor[$1]}/healthz?js-server-only=true"
}

# --- nodes ----------------------------------------------------------------------------------------

toml_list() {
  local out="" u
  for u in "$@"; do out+="${out:+, }\"$u\""; done
  echo "[$out]"
}

write_node_conf() {
  local i=$1
  mkdir -p "${node_data[i]}"
  cat >"${node_config[i]}" <<EOF
# Generated by scripts/cluster.sh.
listen = "${node_listen[i]}"
data = "${node_data[i]}"

[extractors.face]
enabled = false

[[models]]
id = "synthetic-face@1"
dim = 128
modality = "face"
calibration = "calibration/synthetic-face@1.json"

[cluster]
enabled = true
name = "local"
node_id = "${node_id[i]}"
etcd = $(toml_list "${etcd_url[@]}")
nats = $(toml_list "${nats_url[@]}")
shards = $shards
replication = $replication
log_replicas = $log_replicas
EOF
}

start_node() {
  local i=$1 v unset_args=()
  # The launcher owns where a node listens, its data and its cluster settings.
  for v in $(compgen -e); do
    case $v in BIOMATCH__LISTEN | BIOMATCH__DATA | BIOMATCH__CLUSTER__*) unset_args+=(-u "$v") ;; esac
  done
  env "${unset_args[@]}" BIOMATCH_LOG="${BIOMATCH_LOG:-info}" \
    "$bin" serve --config "${node_config[i]}" </dev/null >>"${node_log[i]}" 2>&1 &
  echo $! >"${node_pid_file[i]}"
}

node_ready() {
  http_ok "${node_url[$1]}/readyz"
}

# resolve_bin PATH EXPLICIT: the node binary, absolute; built when it is the default one and missing.
resolve_bin() {
  local b=$1 explicit=$2
  [[ $b == /* ]] || b="$PWD/$b"
  if [ ! -x "$b" ]; then
    if [ "$explicit" = 0 ] && [ "$b" = "$PWD/target/release/biomatch" ]; then
      echo "cluster.sh: $b missing; building it" >&2
      cargo build --release --locked -p biomatch-matcher >&2
    fi
    [ -x "$b" ] || die "node binary $b not found or not executable"
  fi
  echo "$b"
}

# --- waiting --------------------------------------------------------------------------------------

# needle KIND I: the argument that marks process I of KIND (see `ours`).
needle() {
  case $1 in
    etcd) echo "${etcd_data_dir[$2]}" ;;
    nats) echo "${nats_conf[$2]}" ;;
    node) echo "${node_config[$2]}" ;;
  esac
}

pid_file_of() {
  case $1 in
    etcd) echo "${etcd_pid_file[$2]}" ;;
    nats) echo "${nats_pid_file[$2]}" ;;
    node) echo "${node_pid_file[$2]}" ;;
  esac
}

log_of() {
  case $1 in
    etcd) echo "${etcd_log[$2]}" ;;
    nats) echo "${nats_log[$2]}" ;;
    node) echo "${node_log[$2]}" ;;
  esac
}

describe() {
  case $1 in
    etcd) echo "etcd member $2 (${etcd_url[$2]})" ;;
    nats) echo "NATS member $2 (${nats_url[$2]}, monitor ${nats_monitor[$2]})" ;;
    node) echo "node $2 (${node_url[$2]})" ;;
  esac
}

fail_with_log() {
  local kind=$1 i=$2 why=$3
  echo "cluster.sh: $(describe "$kind" "$i") $why; the last lines of $(log_of "$kind" "$i"):" >&2
  tail -n 40 "$(log_of "$kind" "$i")" >&2 || true
  echo "cluster.sh: processes left running for inspection; \`scripts/cluster.sh down $dir\` stops them" >&2
  exit 1
}

# wait_ready KIND TIMEOUT I...: until each I of KIND answers KIND_ready; fails at once when one
# exits, or after TIMEOUT s.
wait_ready() {
  local kind=$1 timeout=$2 i
  shift 2
  local pending=("$@") still deadline=$((SECONDS + timeout))
  while ((${#pending[@]})); do
    still=()
    for i in "${pending[@]}"; do
      ours "$(pid_file_of "$kind" "$i")" "$(needle "$kind" "$i")" >/dev/null ||
        fail_with_log "$kind" "$i" "exited during start-up"
      "${kind}_ready" "$i" || still+=("$i")
    done
    pending=("${still[@]}")
    ((${#pending[@]})) || break
    ((SECONDS < deadline)) || fail_with_log "$kind" "${pending[0]}" "not ready within $timeout s"
    sleep 0.2
  done
}

wait_accepting_writes() {
  local deadline=$1
  until http_ok "${node_url[0]}/v1/admin/cluster" accepting_writes; do
    ((SECONDS < deadline)) ||
      fail_with_log node 0 "did not answer GET /v1/admin/cluster with \"accepting_writes\": true within $NODE_TIMEOUT s"
    sleep 0.2
  done
}

need_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || die "$t not found: run scripts/setup.sh (Debian packages etcd-server, etcd-client, nats-server)"
  done
}

# --- commands -------------------------------------------------------------------------------------

up() {
  local nodes=3 etcd_members=3 nats_members=3 bin_arg=${BIOMATCH_BIN:-target/release/biomatch} explicit=0
  [ -n "${BIOMATCH_BIN:-}" ] && explicit=1
  while (($#)); do
    [ $# -ge 2 ] || usage
    case $1 in
      --nodes) nodes=$2 ;;
      --etcd-members) etcd_members=$2 ;;
      --nats-members) nats_members=$2 ;;
      --shards) shards=$2 ;;
      --replication) replication=$2 ;;
      --bin) bin_arg=$2 explicit=1 ;;
      *) usage ;;
    esac
    shift 2
  done
  shards=${shards:-12}
  replication=${replication:-2}
  local v
  for v in "$nodes" "$etcd_members" "$nats_members" "$shards" "$replication"; do
    [[ $v =~ ^[0-9]+$ ]] || die "not a number: $v"
  done
  ((etcd_members >= 1 && nats_members >= 1 && shards >= 1 && replication >= 1)) ||
    die "--etcd-members, --nats-members, --shards and --replication must be at least 1"
  [ -z "$(ls -A "$dir")" ] || die "$dir is not empty (\`down\` it and remove it, or pick another)"
  need_tools etcd etcdctl nats-server python3
  bin=""
  ((nodes == 0)) || bin=$(resolve_bin "$bin_arg" "$explicit")
  # JetStream streams have at most 5 replicas.
  log_replicas=$((nats_members < 5 ? nats_members : 5))
  etcd_token="biomatch-local-$(python3 -c 'import secrets; print(secrets.token_hex(6))')"

  local ports i
  mapfile -t ports < <(free_ports $((2 * etcd_members + 3 * nats_members + nodes)))
  etcd_name=() etcd_url=() etcd_peer_url=() etcd_pid_file=() etcd_data_dir=() etcd_log=()
  for ((i = 0; i < etcd_members; i++)); do
    mkdir -p "$dir/etcd/$i"
    etcd_name[i]="etcd-$i"
    etcd_url[i]="http://127.0.0.1:${ports[0]}"
    etcd_peer_url[i]="http://127.0.0.1:${ports[1]}"
    etcd_pid_file[i]="$dir/etcd/$i/pid"
    etcd_data_dir[i]="$dir/etcd/$i/data"
    etcd_log[i]="$dir/etcd/$i/etcd.log"
    ports=("${ports[@]:2}")
  done
  nats_name=() nats_url=() nats_route_url=() nats_monitor=() nats_pid_file=() nats_conf=() nats_log=() nats_dir=()
  for ((i = 0; i < nats_members; i++)); do
    mkdir -p "$dir/nats/$i"
    nats_name[i]="nats-$i"
    nats_url[i]="nats://127.0.0.1:${ports[0]}"
    nats_route_url[i]="nats-route://127.0.0.1:${ports[1]}"
    nats_monitor[i]="http://127.0.0.1:${ports[2]}"
    nats_dir[i]="$dir/nats/$i"
    nats_pid_file[i]="$dir/nats/$i/pid"
    nats_conf[i]="$dir/nats/$i/nats.conf"
    nats_log[i]="$dir/nats/$i/nats.log"
    ports=("${ports[@]:3}")
  done
  node_id=() node_url=() node_listen=() node_pid_file=() node_config=() node_log=() node_data=() node_dir=()
  for ((i = 0; i < nodes; i++)); do
    mkdir -p "$dir/nodes/$i"
    new_node "$i" "${ports[i]}"
  done

  write_state
  for i in "${!etcd_name[@]}"; do start_etcd "$i"; done
  for i in "${!nats_name[@]}"; do
    write_nats_conf "$i"
    start_nats "$i"
  done
  wait_ready etcd "$ETCD_TIMEOUT" "${!etcd_name[@]}"
  echo "cluster.sh: etcd up (${etcd_url[*]})" >&2
  wait_ready nats "$NATS_TIMEOUT" "${!nats_name[@]}"
  echo "cluster.sh: NATS up (${nats_url[*]})" >&2
  ((nodes > 0)) || {
    echo "cluster.sh: no nodes asked for; $dir/nodes.json" >&2
    return 0
  }
  local deadline=$((SECONDS + NODE_TIMEOUT))
  for i in "${!node_id[@]}"; do
    write_node_conf "$i"
    start_node "$i"
  done
  wait_ready node "$NODE_TIMEOUT" "${!node_id[@]}"
  wait_accepting_writes "$deadline"
  echo "cluster.sh: $nodes nodes up (${node_url[*]}); $dir/nodes.json" >&2
}

# write_state: the arrays as DIR/nodes.json (tmp + mv).
write_state() {
  local i spec=()
  for i in "${!node_id[@]}"; do
    spec+=(node "${node_id[i]}" "${node_url[i]}" "${node_listen[i]}" "${node_pid_file[i]}" "${node_config[i]}" "${node_log[i]}" "${node_data[i]}" "${node_dir[i]}")
  done
  for i in "${!etcd_name[@]}"; do
    spec+=(etcd "${etcd_name[i]}" "${etcd_url[i]}" "${etcd_peer_url[i]}" "${etcd_pid_file[i]}" "${etcd_data_dir[i]}" "${etcd_log[i]}")
  done
  for i in "${!nats_name[@]}"; do
    spec+=(nats "${nats_name[i]}" "${nats_url[i]}" "${nats_route_url[i]}" "${nats_monitor[i]}" "${nats_pid_file[i]}" "${nats_conf[i]}" "${nats_log[i]}" "${nats_dir[i]}")
  done
  python3 - "$dir/nodes.json" "$shards" "$replication" "$log_replicas" "$bin" "$etcd_token" "${spec[@]}" <<'PY'
import json, os, sys
path, shards, replication, log_replicas, binary, token = sys.argv[1:7]
keys = {
    "node": ["id", "url", "listen", "pid_file", "config", "log", "data", "dir"],
    "etcd": ["name", "url", "peer_url", "pid_file", "data_dir", "log"],
    "nats": ["name", "url", "route_url", "monitor", "pid_file", "conf", "log", "dir"],
}
st = {"nodes": [], "etcd": [], "nats": []}
rest = sys.argv[7:]
while rest:
    kind, ks = rest[0], keys[rest[0]]
    st["nodes" if kind == "node" else kind].append(dict(zip(ks, rest[1 : 1 + len(ks)])))
    rest = rest[1 + len(ks) :]
st.update(shards=int(shards), replication=int(replication), log_replicas=int(log_replicas),
          cluster_name="local", bin=binary, etcd_token=token)
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(st, f, indent=2)
    f.write("\n")
os.replace(tmp, path)
PY
}

down() {
  [ -f "$dir/nodes.json" ] || {
    echo "cluster.sh: no $dir/nodes.json; nothing to stop" >&2
    return 0
  }
  load_state
  local kind i pid pids
  for kind in node nats etcd; do
    pids=()
    case $kind in
      node) set -- "${!node_id[@]}" ;;
      nats) set -- "${!nats_name[@]}" ;;
      etcd) set -- "${!etcd_name[@]}" ;;
    esac
    local leader=""
    # An etcd leader stopping hands its leadership to a follower and waits up to 7 s when that one
    # stops at the same time: the followers go first, then the leader (alone, it exits at once).
    [ "$kind" = etcd ] && leader=$(etcd_leader)
    for i in "$@"; do
      [ "$i" = "$leader" ] && continue
      pid=$(ours "$(pid_file_of "$kind" "$i")" "$(needle "$kind" "$i")") && pids+=("$pid")
    done
    stop_group "${pids[@]}"
    if [ -n "$leader" ] && pid=$(ours "$(pid_file_of etcd "$leader")" "$(needle etcd "$leader")"); then
      stop_group "$pid"
    fi
  done
  echo "cluster.sh: $dir down" >&2
}

# etcd_leader: the index of the etcd member that is the leader now, or nothing.
etcd_leader() {
  local eps
  eps=$(IFS=,; echo "${etcd_url[*]}")
  ETCDCTL_API=3 etcdctl --endpoints "$eps" --dial-timeout 1s --command-timeout 2s \
    endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
urls = sys.argv[1].split(",")
for e in json.load(sys.stdin):
    st = e["Status"]
    if st["header"]["member_id"] == st["leader"] and e["Endpoint"] in urls:
        print(urls.index(e["Endpoint"]))
        break
' "$eps" 2>/dev/null || true
}

add_node() {
  local bin_arg="" i
  while (($#)); do
    if [ $# -lt 2 ] || [ "$1" != --bin ]; then usage; fi
    bin_arg=$2
    shift 2
  done
  load_state
  if [ -n "$bin_arg" ]; then
    bin=$(resolve_bin "$bin_arg" 1)
  elif [ -z "$bin" ]; then
    bin=$(resolve_bin "${BIOMATCH_BIN:-target/release/biomatch}" "$([ -n "${BIOMATCH_BIN:-}" ] && echo 1 || echo 0)")
  fi
  i=${#node_id[@]}
  [ ! -e "$dir/nodes/$i" ] || die "$dir/nodes/$i exists already"
  mkdir -p "$dir/nodes/$i"
  new_node "$i" "$(free_port)"
  write_node_conf "$i"
  add_node_state
  start_node "$i"
  wait_ready node "$NODE_TIMEOUT" "$i"
  echo "cluster.sh: ${node_id[i]} up (${node_url[i]})" >&2
}

# member KIND INDEX: check that INDEX names a process of KIND in nodes.json.
member() {
  local kind=$1 i=$2 n
  case $kind in
    node) n=${#node_id[@]} ;;
    etcd) n=${#etcd_name[@]} ;;
    nats) n=${#nats_name[@]} ;;
    *) usage ;;
  esac
  if ! [[ $i =~ ^[0-9]+$ ]] || ((i >= n)); then die "no $kind $i in $dir/nodes.json ($n of them)"; fi
}

kill_one() {
  [ $# -eq 2 ] || usage
  load_state
  member "$1" "$2"
  local pid
  if ! pid=$(ours "$(pid_file_of "$1" "$2")" "$(needle "$1" "$2")"); then
    echo "cluster.sh: $(describe "$1" "$2") is not running" >&2
    return 0
  fi
  kill -KILL "$pid"
  for _ in $(seq 1 100); do
    alive "$pid" || break
    sleep 0.1
  done
  echo "cluster.sh: killed $(describe "$1" "$2"), pid $pid" >&2
}

start_one() {
  [ $# -eq 2 ] || usage
  load_state
  member "$1" "$2"
  local kind=$1 i=$2 pid
  if pid=$(ours "$(pid_file_of "$kind" "$i")" "$(needle "$kind" "$i")"); then
    echo "cluster.sh: $(describe "$kind" "$i") already runs (pid $pid)" >&2
  else
    case $kind in
      etcd) start_etcd "$i" ;;
      nats) start_nats "$i" ;;
      node)
        [ -x "$bin" ] || die "node binary $bin (from nodes.json) not found"
        start_node "$i"
        ;;
    esac
  fi
  case $kind in
    etcd) wait_ready etcd "$ETCD_TIMEOUT" "$i" ;;
    nats) wait_ready nats "$NATS_TIMEOUT" "$i" ;;
    node) wait_ready node "$NODE_TIMEOUT" "$i" ;;
  esac
  echo "cluster.sh: $(describe "$kind" "$i") up" >&2
}

case $cmd in
  up) up "$@" ;;
  down)
    [ $# -eq 0 ] || usage
    down
    ;;
  add-node) add_node "$@" ;;
  kill) kill_one "$@" ;;
  start) start_one "$@" ;;
  *) usage ;;
esac
