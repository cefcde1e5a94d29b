#!/usr/bin/env bash
# Image bombs against `biomatch serve`, on loopback, bounded: peak memory and what everyone got.
#
#   scripts/image-bomb.sh              release build
#   BIOMATCH_PROFILE=debug scripts/image-bomb.sh
#
# 1. generates the bombs with Pillow (.setup/venv) into target/image-bomb/:
#    over the 24 MP limit (refused from the header): a 5999x5999 RGBA PNG (~150 KB), a
#    5999x5999 baseline JPEG cut to ~200 KB with an end-of-image marker appended, a 5999x5999
#    progressive JPEG (~210 KB); at the limit (5999x4000, decoded within the decode budget): the
#    same three, and a progressive 4:4:4 JPEG (the costliest per pixel);
# 2. starts the service on a fresh data directory and a free 127.0.0.1 port (default limits:
#    max_concurrent 64, decode_memory_mb 512), enrolls a face photo and a template;
# 3. phase "over": 64 concurrent clients send 1920 over-limit bombs; phase "at": 64 concurrent
#    clients send 128 at-limit bombs. During each phase ordinary requests run next to them: face
#    photo verify, face extract, template verify and identify;
# 4. prints, per phase, the status/code counts of each kind of request, the latency of the
#    ordinary ones and the server's peak RSS (VmHWM of /proc/PID/status), and one JSON line.
# The server is stopped (SIGTERM) on exit. Results: target/image-bomb/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/lib.sh
export OPENBLAS_NUM_THREADS=1

profile=${BIOMATCH_PROFILE:-release}
out=target/image-bomb
mkdir -p "$out"
if [ "$profile" = release ]; then
  cargo build --release --locked -p biomatch-matcher
else
  cargo build --locked -p biomatch-matcher
fi
bin=target/$profile/biomatch
py=.setup/venv/bin/python

"$py" - "$out" <<'EOF'
import io, os, sys
from PIL import Image
out = sys.argv[1]
def save(name, data):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        open(p, "wb").write(data)
def enc(im, **kw):
    b = io.BytesIO(); im.save(b, **kw); return b.getvalue()
for tag, (w, h) in {"over": (5999, 5999), "at": (5999, 4000)}.items():
    if os.path.exists(os.path.join(out, f"{tag}-progressive.jpg")):
        continue
    rgba = Image.new("RGBA", (w, h), (120, 130, 140, 255))
    rgb = rgba.convert("RGB")
    save(f"{tag}-rgba.png", enc(rgba, format="PNG"))
    base = enc(rgb, format="JPEG")
    save(f"{tag}-cut.jpg", base[:200_000] + b"\xff\xd9")
    save(f"{tag}-progressive.jpg", enc(rgb, format="JPEG", progressive=True))
    if tag == "at":
        save("at-progressive-444.jpg", enc(rgb, format="JPEG", progressive=True, subsampling=0))
for f in sorted(os.listdir(out)):
    if f.endswith((".png", ".jpg")):
        print(f"image-bomb: {f}: {os.path.getsize(os.path.join(out, f))} bytes", file=sys.stderr)
EOF

data=$(mktemp -d)
port=$(free_port)
server_pid=""
cleanup() {
  stop_pid image-bomb "$server_pid"
  rm -rf "$data"
}
trap cleanup EXIT
"$bin" serve --data "$data/store" --listen "127.0.0.1:$port" 2>"$out/server.log" &
server_pid=$!
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.1
done

"$py" - "$out" "$port" "$server_pid" <<'EOF'
import base64, collections, json, os, statistics, sys, threading, time, urllib.request, urllib.error
from concurrent.futures import ThreadPoolExecutor
out, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
url = f"http://127.0.0.1:{port}"
b64 = lambda p: base64.b64encode(open(p, "rb").read()).decode()

def post(path, body, timeout=60):
    data = json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"content-type": "application/json"})
    t = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, payload = r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        status, payload = e.code, json.loads(e.read() or b"{}")
    except Exception as e:  # connection refused/reset, client timeout
        status, payload = 0, {"code": type(e).__name__}
    return status, payload.get("code", ""), time.monotonic() - t

def mem():
    f = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
    kb = lambda k: int(f[k].split()[0]) * 1024
    return kb("VmRSS"), kb("VmHWM")

photo_a1 = b64(".setup/fixtures/face/person_a_1.jpg")
photo_a2 = b64(".setup/fixtures/face/person_a_2.jpg")
s, c, _ = post("/v1/subjects", {"subject_id": "BOMB-0001", "face": {"image": photo_a1}})
assert s == 201, (s, c)
vec = json.loads(urllib.request.urlopen(urllib.request.Request(url + "/v1/extract",
      data=json.dumps({"image": photo_a2}).encode(), headers={"content-type": "application/json"})).read())["vector"]
template = {"template": {"model": "sface@2021dec", "vector": vec}}
ordinary = [
    ("verify-photo", "/v1/verify", {"subject_id": "BOMB-0001", "face": {"image": photo_a2}}),
    ("extract-photo", "/v1/extract", {"image": photo_a2}),
    ("verify-template", "/v1/verify", {"subject_id": "BOMB-0001", "face": template}),
    ("identify-template", "/v1/identify", {"face": template}),
]
rss0, _ = mem()
print(f"image-bomb: server pid {pid}, RSS after warm-up {rss0 / 2**20:.0f} MiB", file=sys.stderr)

def phase(tag, files, total):
    bombs = [(f, b64(os.path.join(out, f))) for f in files]
    results = collections.Counter()
    normal = collections.defaultdict(collections.Counter)
    lat = collections.defaultdict(list)
    done = threading.Event()
    peak_rss = [0]
    def sampler():
        while not done.is_set():
            peak_rss[0] = max(peak_rss[0], mem()[0]); time.sleep(0.05)
    def bomb(i):
        f, body = bombs[i % len(bombs)]
        kind = "extract" if i % 2 else "verify"
        path, req = ("/v1/extract", {"image": body}) if kind == "extract" else \
            ("/v1/verify", {"subject_id": "BOMB-0001", "face": {"image": body}})
        s, c, _ = post(path, req)
        results[(f, s, c)] += 1
    def ordinary_loop():
        while not done.is_set():
            for name, path, body in ordinary:
                s, c, dt = post(path, body)
                normal[name][(s, c)] += 1
                lat[name].append(dt)
            time.sleep(0.05)
    th = [threading.Thread(target=sampler), threading.Thread(target=ordinary_loop)]
    for t in th: t.start()
    t0 = time.monotonic()
    with ThreadPoolExecutor(64) as ex:
        list(ex.map(bomb, range(total)))
    secs = time.monotonic() - t0
    done.set()
    for t in th: t.join()
    rss, hwm = mem()
    print(f"\n== phase {tag}: {total} bomb requests, 64 concurrent, {secs:.1f} s", file=sys.stderr)
    for (f, s, c), n in sorted(results.items()):
        print(f"  bomb {f:26s} {s} {c:22s} x{n}", file=sys.stderr)
    for name, cnt in normal.items():
        l = sorted(lat[name])
        print(f"  {name:18s} " + ", ".join(f"{s} {c or 'ok'} x{n}" for (s, c), n in cnt.items())
              + f"; p50 {statistics.median(l)*1000:.0f} ms, max {l[-1]*1000:.0f} ms", file=sys.stderr)
    print(f"  server RSS now {rss / 2**20:.0f} MiB, sampled max {peak_rss[0] / 2**20:.0f} MiB, "
          f"VmHWM (peak since start) {hwm / 2**20:.0f} MiB", file=sys.stderr)
    return {"phase": tag, "bomb_requests": total, "seconds": round(secs, 1),
            "bombs": {f"{f} {s} {c}": n for (f, s, c), n in results.items()},
            "ordinary": {k: {f"{s} {c or 'ok'}": n for (s, c), n in v.items()} for k, v in normal.items()},
            "ordinary_p50_ms": {k: round(statistics.median(v) * 1000) for k, v in lat.items()},
            "ordinary_max_ms": {k: round(max(v) * 1000) for k, v in lat.items()},
            "rss_sampled_max_mib": round(peak_rss[0] / 2**20), "vmhwm_mib": round(hwm / 2**20)}

rows = [phase("over", ["over-rgba.png", "over-cut.jpg", "over-progressive.jpg"], 1920),
        phase("at", ["at-rgba.png", "at-cut.jpg", "at-progressive.jpg", "at-progressive-444.jpg"], 128)]
with open(os.path.join(out, "results.jsonl"), "a") as f:
    for r in rows:
        r["rss_after_warmup_mib"] = round(rss0 / 2**20)
        print(json.dumps(r))
        f.write(json.dumps(r) + "\n")
EOF
