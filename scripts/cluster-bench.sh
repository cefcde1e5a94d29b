#!/usr/bin/env bash
# Enroll and identify throughput of a local cluster on 1, 2 and 3 nodes (scripts/cluster.sh),
# every node and every engine (etcd ×3, NATS ×3) on this one machine: the nodes share its cores,
# so the numbers compare configurations on the same hardware, not capacity.
#
#   scripts/cluster-bench.sh                       # the single-node baseline, then 1 2 3 nodes
#   CLUSTER_BENCH_NODES="3" CLUSTER_BENCH_DURATION=20 scripts/cluster-bench.sh
#
# "single" is the baseline: one plain `biomatch serve` (no cluster) on the same machine and load.
# Per cluster size N (replication min(2, N), 12 shards): `cluster.sh up`, preload
# CLUSTER_BENCH_GALLERY (default 20000) subjects through POST /v1/subjects/batch, then
#   enroll:   one wrk per node at once (scripts/wrk/enroll.lua, -t1 -c4), every request a new
#             subject with a 128-d synthetic-face@1 template;
#   identify: one wrk per node at once (scripts/wrk/identify.lua, -t1 -c4), max_results 10.
# Prints one JSON line per run and appends it to target/cluster-bench/results.jsonl:
#   {"nodes":N,"op":"enroll","requests_per_s":…,"p50_ms":…,"p99_ms":…,"non_2xx":…,…}
# The cluster is always stopped on exit. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
apt_ensure cluster-bench wrk curl
NODES=${CLUSTER_BENCH_NODES:-single 1 2 3}
DURATION=${CLUSTER_BENCH_DURATION:-10}
GALLERY=${CLUSTER_BENCH_GALLERY:-20000}
out=target/cluster-bench
mkdir -p "$out"
export OPENBLAS_NUM_THREADS=1
# BIOMATCH_BIN: another build (e.g. target/debug/biomatch); default: the release build.
if [ -z "${BIOMATCH_BIN:-}" ]; then
  cargo build --release --locked -p biomatch-matcher
  export BIOMATCH_BIN=target/release/biomatch
fi
export BIOMATCH_LOG=${BIOMATCH_LOG:-warn}

dir=""
single_pid=""
cleanup() {
  [ -z "$dir" ] || scripts/cluster.sh down "$dir" >/dev/null 2>&1 || true
  [ -z "$single_pid" ] || stop_pid cluster-bench "$single_pid"
}
trap cleanup EXIT

python3 - "$out" <<'PY'
import json, math, random, sys
out = sys.argv[1]
rng = random.Random(15)
def unit():
    v = [rng.uniform(-1, 1) for _ in range(128)]
    n = math.sqrt(sum(x * x for x in v))
    return [round(x / n, 6) for x in v]
face = unit()
with open(f"{out}/enroll.samples", "w") as f:
    f.write('"face":{"template":{"model":"synthetic-face@1","vector":%s}}' % json.dumps(face, separators=(",", ":")))
with open(f"{out}/identify.json", "w") as f:
    json.dump({"face": {"template": {"model": "synthetic-face@1", "vector": face}}, "max_results": 10}, f)
PY

for n in $NODES; do
  dir=$(mktemp -d /tmp/biomatch-cluster-bench.XXXXXX)
  if [ "$n" = single ]; then
    port=$(free_port)
    BIOMATCH__EXTRACTORS__FACE__ENABLED=false \
      BIOMATCH__MODELS='[{id="synthetic-face@1",dim=128,modality="face",calibration="calibration/synthetic-face@1.json"}]' \
      "$BIOMATCH_BIN" serve --data "$dir/store" --listen "127.0.0.1:$port" 2>"$out/single.log" &
    single_pid=$!
    urls=("http://127.0.0.1:$port")
    for _ in $(seq 1 300); do curl -fsS -m 2 "${urls[0]}/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  else
    rep=$((n < 2 ? n : 2))
    scripts/cluster.sh up "$dir" --nodes "$n" --replication "$rep" >"$out/up-$n.log" 2>&1
    mapfile -t urls < <(python3 -c 'import json,sys; [print(n["url"]) for n in json.load(open(sys.argv[1]))["nodes"]]' "$dir/nodes.json")
  fi
  # Preload: batches of 500 through node 0.
  python3 - "${urls[0]}" "$GALLERY" <<'PY'
import json, math, random, sys, urllib.request
url, total = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
def unit():
    v = [rng.uniform(-1, 1) for _ in range(128)]
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]
for start in range(0, total, 500):
    subjects = [{"subject_id": f"pre-{i}", "face": {"template": {"model": "synthetic-face@1", "vector": unit()}}}
                for i in range(start, min(total, start + 500))]
    req = urllib.request.Request(url + "/v1/subjects/batch", json.dumps({"subjects": subjects}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        res = json.load(r)["results"]
        bad = [x for x in res if x["status"] != 201]
        if bad:
            sys.exit(f"preload: {len(bad)} refused, first {bad[0]}")
PY
  for op in enroll identify; do
    pids=()
    for i in "${!urls[@]}"; do
      if [ "$op" = enroll ]; then
        INGEST_PREFIX="b$n-$i" INGEST_SAMPLES="$out/enroll.samples" \
          wrk -t1 -c4 -d"${DURATION}s" --timeout 10s -s scripts/wrk/enroll.lua "${urls[$i]}" >"$out/$op-$n-$i.out" 2>&1 &
      else
        IDENTIFY_BODY="$out/identify.json" \
          wrk -t1 -c4 -d"${DURATION}s" --timeout 10s -s scripts/wrk/identify.lua "${urls[$i]}" >"$out/$op-$n-$i.out" 2>&1 &
      fi
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    python3 - "$out" "$n" "$op" "$GALLERY" <<'PY' | tee -a "$out/results.jsonl"
import glob, json, sys
out, n, op, gallery = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
runs = []
for path in sorted(glob.glob(f"{out}/{op}-{n}-*.out")):
    line = [l for l in open(path) if l.startswith("{")][-1]
    runs.append(json.loads(line))
reqs = sum(r["requests"] for r in runs)
dur = max(r["duration_us"] for r in runs) / 1e6
print(json.dumps({
    "nodes": n if n == "single" else int(n), "op": op, "gallery": gallery, "clients": 4 * len(runs),
    "requests_per_s": round(reqs / dur, 1),
    "ok": sum(r["created"] for r in runs),
    "non_2xx": sum(r["other_status"] for r in runs),
    "socket_errors": sum(r["socket_errors"] for r in runs),
    # Per node; the worst node's percentiles.
    "p50_ms": round(max(r["p50_us"] for r in runs) / 1000, 2),
    "p99_ms": round(max(r["p99_us"] for r in runs) / 1000, 2),
}))
PY
  done
  if [ "$n" = single ]; then
    stop_pid cluster-bench "$single_pid"
    single_pid=""
  else
    scripts/cluster.sh down "$dir" >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  dir=""
done
