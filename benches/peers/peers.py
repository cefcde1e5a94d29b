"""The systems a user would pick instead of biomatch, on biomatch's own gallery and probes.

    python peers.py run --gallery G.bmvec --probes P.bmvec --out DIR [--systems all|a,b]
                        [--threads N] [--timeout-s S]

`run` first runs FAISS `IDMap,Flat` (exact inner product: the ground truth, saved as
DIR/truth.npz), then every other system, each in a child process of its own (`one`), so that its
RSS growth is its own and a crash or a time-out is reported against it. Each system builds one
index (timed, all threads) and then, per operating point (a search parameter), measures:

- single-query latency: every probe searched alone on one thread, after a warm-up of 100
  probes; p50/p99 in ms (linear interpolation, as biomatch's `metrics::percentile`);
- batch throughput: all probes in one call on `--threads` threads, repeated for at least 1 s;
- mate hit rate: share of mated probes whose identity is in the top 10;
- recall vs exact: share of all probes (mated and non-mated) whose exact top-1 is in the top 10.

Every operating point is one JSON line in DIR/peers.jsonl (fields in docs/bench.md). Any error
stops the run with a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bmvec import read_bmvec  # noqa: E402

K = 10
WARMUP = 100
MIN_BATCH_SECONDS = 1.0
MAX_BATCH_REPS = 50

# Operating points. Re-rank depths k' are the totals over the index; biomatch's k' is per shard.
PQ_RERANK_K = [16, 64, 256]
IVF_NPROBE = [4, 16, 64]
IVF_RERANK_K = 64
HNSW_EF = [16, 64, 256]

SYSTEMS = [
    "faiss-flat",
    "faiss-pq-rerank",
    "faiss-ivf-pq-rerank",
    "faiss-hnsw",
    "hnswlib",
    "usearch-f16",
    "usearch-i8",
]


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def ivf_lists(n: int) -> int:
    """The IVF list count biomatch's `default_factory` picks: 4·sqrt(n), rounded to a power of 2."""
    return int(2 ** round(np.log2(4.0 * np.sqrt(n))))


def percentile(sorted_ms: np.ndarray, p: float) -> float:
    return float(np.percentile(sorted_ms, p))  # linear, as core/src/metrics.rs


class Data:
    def __init__(self, gallery: str, probes: str) -> None:
        g = read_bmvec(gallery)
        p = read_bmvec(probes)
        if g.dim != p.dim:
            raise SystemExit(f"gallery dimension {g.dim} != probes dimension {p.dim}")
        if len(np.unique(g.labels)) != len(g):
            raise SystemExit("gallery labels are not unique (one template per identity expected)")
        self.x = g.vectors
        self.labels = g.labels.astype(np.int64)
        self.q = p.vectors
        self.qlabels = p.labels.astype(np.int64)
        self.mated = int(p.meta["mated"])
        self.n, self.dim = self.x.shape
        self.meta = {"gallery": g.meta, "probes": p.meta}


def quality(top: np.ndarray, data: Data, truth_top1: np.ndarray) -> dict:
    """Mate hit rate and recall vs exact of top-`K` label lists (one row per probe)."""
    m = data.mated
    mate = [data.qlabels[i] in top[i] for i in range(m)]
    found = [truth_top1[i] in top[i] for i in range(top.shape[0])]
    share = lambda xs: float(np.mean(xs)) if len(xs) else None  # noqa: E731
    return {
        "mate_hit_rate": share(mate),
        "recall_vs_exact": share(found),
        "recall_vs_exact_mated": share(found[:m]),
        "recall_vs_exact_nonmated": share(found[m:]),
    }


def time_single(search_one, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Search each probe alone; latencies (ms, sorted) and the top-K labels per probe."""
    for i in range(min(WARMUP, q.shape[0])):
        search_one(q[i : i + 1])
    lat = np.empty(q.shape[0])
    top = np.full((q.shape[0], K), -1, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(q.shape[0]):
        row = q[i : i + 1]
        t = clock()
        labels = search_one(row)
        lat[i] = (clock() - t) / 1e6
        top[i, : len(labels)] = labels[:K]
    lat.sort()
    return lat, top


def time_batch(search_all, q: np.ndarray) -> tuple[float, int]:
    """Queries per second of whole-batch searches, repeated for at least MIN_BATCH_SECONDS."""
    reps, t0 = 0, time.perf_counter()
    while True:
        search_all(q)
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= MIN_BATCH_SECONDS or reps >= MAX_BATCH_REPS:
            return reps * q.shape[0] / elapsed, reps


# --- the systems: each returns (build info, list of operating points) where an operating point
# is (param name, value, set-up callable, search_one, search_all).


def faiss_system(name: str, data: Data, threads: int, workdir: Path):
    import faiss

    d, n = data.dim, data.n
    ids = data.labels
    if name == "faiss-flat":
        factory, train = "IDMap,Flat", 0
    elif name == "faiss-pq-rerank":
        factory, train = "IDMap,PQ32x4fs,RFlat", min(n, 100_000)
    elif name == "faiss-ivf-pq-rerank":
        nlist = ivf_lists(n)
        factory, train = f"IDMap,IVF{nlist},PQ32x4fs,RFlat", min(n, max(100_000, 40 * nlist))
    elif name == "faiss-hnsw":
        factory, train = "IDMap,HNSW32", 0
    else:
        raise ValueError(name)
    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(1)
        sample = np.sort(rng.choice(n, size=train, replace=False)) if train < n else slice(None)
        index.train(data.x[sample])
    index.add_with_ids(data.x, ids)
    build_s = time.perf_counter() - t
    index_bytes = int(faiss.serialize_index(index).nbytes)
    ps = faiss.ParameterSpace()

    def set_rerank(k_prime):
        # Directly: ParameterSpace's "k_factor_rf" truncates the factor to an integer.
        refine = faiss.downcast_index(index.index)
        assert isinstance(refine, faiss.IndexRefine), type(refine)
        refine.k_factor = k_prime / K

    def one(row):
        return index.search(row, K)[1][0]

    def batch(q):
        return index.search(q, K)[1]

    def single_threaded():
        faiss.omp_set_num_threads(1)

    def all_threads():
        faiss.omp_set_num_threads(threads)

    if name == "faiss-flat":
        points = [("exact", None, lambda: None)]
    elif name == "faiss-pq-rerank":
        points = [
("k_prime", k, lambda k=k: set_rerank(k)) for k in PQ_RERANK_K
        ]
    elif name == "faiss-ivf-pq-rerank":

        def ivf_point(nprobe):
            set_rerank(IVF_RERANK_K)
            ps.set_index_parameter(index, "nprobe", nprobe)

        points = [("nprobe", p, lambda p=p: ivf_point(p)) for p in IVF_NPROBE]
    else:
        points = [
            ("efSearch", ef, lambda ef=ef: ps.set_index_parameter(index, "efSearch", ef))
            for ef in HNSW_EF
        ]
    info = {
        "variant": factory,
        "build_s": build_s,
        "index_bytes": index_bytes,
        "train_vectors": train,
        "library": f"faiss-cpu {version('faiss-cpu')} ({faiss.get_compile_options().strip()})",
    }
    return info, points, one, batch, single_threaded, all_threads, index


def hnswlib_system(name: str, data: Data, threads: int, workdir: Path):
    import hnswlib

    m, ef_construction = 16, 200
    t = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=data.dim)
    index.init_index(max_elements=data.n, ef_construction=ef_construction, M=m, random_seed=100)
    index.set_num_threads(threads)
    index.add_items(data.x, data.labels)
    build_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = os.path.join(tmp, "index.bin")
        index.save_index(path)
        index_bytes = os.path.getsize(path)

    def one(row):
        return index.knn_query(row, k=K, num_threads=1)[0][0].astype(np.int64)

    def batch(q):
        return index.knn_query(q, k=K, num_threads=threads)[0]

    points = [("ef", ef, lambda ef=ef: index.set_ef(ef)) for ef in HNSW_EF]
    info = {
        "variant": f"HNSW M={m} ef_construction={ef_construction}, space=ip",
        "build_s": build_s,
        "index_bytes": index_bytes,
        "library": f"hnswlib {version('hnswlib')}",
    }
    return info, points, one, batch, lambda: None, lambda: None, index


def usearch_system(name: str, data: Data, threads: int, workdir: Path):
    from usearch.index import Index

    dtype = name.split("-")[1]
    t = time.perf_counter()
    index = Index(ndim=data.dim, metric="cos", dtype=dtype)
    index.add(data.labels.astype(np.uint64), data.x, threads=threads)
    build_s = time.perf_counter() - t
    index_bytes = int(index.serialized_length)

    def one(row):
        return index.search(row[0], K, threads=1).keys.astype(np.int64)

    def batch(q):
        return index.search(q, K, threads=threads).keys

    def set_ef(ef):
        index.expansion_search = ef

    points = [("expansion_search", ef, lambda ef=ef: set_ef(ef)) for ef in HNSW_EF]
    info = {
        "variant": (
            f"HNSW connectivity={index.connectivity} expansion_add={index.expansion_add}, "
            f"{dtype}, metric=cos"
        ),
        "build_s": build_s,
        "index_bytes": index_bytes,
        "library": f"usearch {version('usearch')} ({index.hardware_acceleration})",
    }
    return info, points, one, batch, lambda: None, lambda: None, index


def warm_library(name: str, data: Data, threads: int) -> None:
    """Start what a library allocates once per process (OpenMP and BLAS thread pools and
    buffers, allocator arenas) on a small throw-away index, so that the RSS growth measured
    afterwards is the index's own."""
    x = data.x[: min(data.n, 4096)]
    if name.startswith("faiss-"):
        import faiss

        faiss.omp_set_num_threads(threads)
        small = faiss.IndexFlatIP(data.dim)
        small.add(x)
        small.search(data.q, K)
        hnsw = faiss.IndexHNSWFlat(data.dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.add(x)
        hnsw.search(data.q, K)
    elif name == "hnswlib":
        import hnswlib

        small = hnswlib.Index(space="ip", dim=data.dim)
        small.init_index(max_elements=x.shape[0])
        small.set_num_threads(threads)
        small.add_items(x)
        small.knn_query(data.q, k=K)
    elif name.startswith("usearch-"):
        from usearch.index import Index

        small = Index(ndim=data.dim, metric="cos", dtype=name.split("-")[1])
        small.add(np.arange(x.shape[0], dtype=np.uint64), x, threads=threads)
        small.search(data.q, K, threads=threads)


def run_one(args) -> None:
    """One system, all its operating points: JSON lines on stdout."""
    data = Data(args.gallery, args.probes)
    workdir = Path(args.out)
    name = args.system
    truth_path = workdir / "truth.npz"
    warm_library(name, data, args.threads)
    rss0 = rss_bytes()
    if name.startswith("faiss-"):
        system = faiss_system(name, data, args.threads, workdir)
    elif name == "hnswlib":
        system = hnswlib_system(name, data, args.threads, workdir)
    elif name.startswith("usearch-"):
        system = usearch_system(name, data, args.threads, workdir)
    else:
        raise SystemExit(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
    info, points, one, batch, single_threaded, all_threads, index = system
    rss_built = rss_bytes()
    if name == "faiss-flat":
        all_threads()
        top = batch(data.q)
        np.savez(truth_path, top10=top, top1=top[:, 0], qlabels=data.qlabels)
    truth = np.load(truth_path)
    if not np.array_equal(truth["qlabels"], data.qlabels):
        raise SystemExit(f"{truth_path} belongs to other probes")
    truth_top1 = truth["top1"]
    for param, value, setup in points:
        setup()
        single_threaded()
        lat, top = time_single(one, data.q)
        all_threads()
        qps, reps = time_batch(batch, data.q)
        rss = rss_bytes()
        line = {
            "system": name,
            "mode": "in-process",
            "variant": info["variant"],
            "param": param,
            "value": value,
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "batch_qps": qps,
            "batch_threads": args.threads,
            "batch_reps": reps,
            "build_s": info["build_s"],
            "index_bytes_per_template": info["index_bytes"] / data.n,
            "rss_delta_bytes_per_template": (rss - rss0) / data.n,
            "rss_delta_after_build_bytes_per_template": (rss_built - rss0) / data.n,
            "probes": int(data.q.shape[0]),
            "mated_probes": data.mated,
            "library": info["library"],
            **quality(top, data, truth_top1),
        }
        if "train_vectors" in info:
            line["train_vectors"] = info["train_vectors"]
        print(json.dumps(line), flush=True)
    del index


def run_all(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = SYSTEMS if args.systems == "all" else args.systems.split(",")
    unknown = [s for s in wanted if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    # The ground truth comes first, whatever was asked for.
    order = ["faiss-flat"] + [s for s in wanted if s != "faiss-flat"]
    results = out / "peers.jsonl"
    tmp = results.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as sink:
        for name in order:
            t = time.perf_counter()
            cmd = [
                sys.executable,
                __file__,
                "one",
                "--system",
                name,
                "--gallery",
                args.gallery,
                "--probes",
                args.probes,
                "--out",
                str(out),
                "--threads",
                str(args.threads),
            ]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s)
            except subprocess.TimeoutExpired:
                raise SystemExit(f"peers: {name} ran past {args.timeout_s} s") from None
            if r.returncode != 0:
                sys.stderr.write(r.stderr[-4000:])
                raise SystemExit(f"peers: {name} failed (exit {r.returncode})")
            lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
            if not lines:
                raise SystemExit(f"peers: {name} printed no result")
            for line in lines:
                sink.write(json.dumps(line) + "\n")
                print(
                    f"peers: {name} {line['param']}={line['value']}: p50 {line['p50_ms']:.3f} ms, "
                    f"{line['batch_qps']:.0f} QPS, recall {line['recall_vs_exact']:.3f}, "
                    f"mate {line['mate_hit_rate']:.3f}",
                    file=sys.stderr,
                )
            print(f"peers: {name} done in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    tmp.replace(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd in ("run", "one"):
        p = sub.add_parser(cmd)
        p.add_argument("--gallery", required=True)
        p.add_argument("--probes", required=True)
        p.add_argument("--out", required=True, help="work directory (truth.npz, peers.jsonl)")
        p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
        if cmd == "run":
            p.add_argument("--systems", default="all", help="all, or a comma-separated list")
            p.add_argument("--timeout-s", type=float, default=3600.0, help="per system")
        else:
            p.add_argument("--system", required=True)
    args = ap.parse_args()
    if args.cmd == "run":
        run_all(args)
    else:
        run_one(args)


if __name__ == "__main__":
    main()
