"""Merge one `scripts/bench.sh` run into `bench-<scale>.json` and `bench-<scale>.png`.

    python report.py --scale 100k --raw target/bench/100k/raw --out docs \\
                     --gallery G.bmvec --probes P.bmvec [--k-default 32]

Reads from `--raw`: `biomatch-inprocess.jsonl` (eval-synthetic's last lines, labelled by
bench.sh), `http-*.jsonl` (one line per HTTP request with its candidates, from loadgen),
`server-memory.jsonl`, `peers.jsonl` and `truth.npz` (peers.py), `loadavg-*`. Writes the JSON
and the PNG atomically and prints one JSON summary line. The schema is in docs/bench.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bmvec import read_bmvec  # noqa: E402

SCHEMA = "biomatch-bench/1"
K = 10
CPU_FLAGS = [
    "sse4_2",
    "popcnt",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vpopcntdq",
    "amx_tile",
]


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def machine(raw: Path) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model, flags = "unknown", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024

    def loadavg(name: str) -> list[float] | None:
        p = raw / f"loadavg-{name}"
        return [float(x) for x in p.read_text().split()[:3]] if p.exists() else None

    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_bytes": mem,
        "flags": {f: f in flags for f in CPU_FLAGS},
        "kernel": platform.release(),
        "loadavg_start": loadavg("start"),
        "loadavg_end": loadavg("end"),
    }


def git_state() -> dict:
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout

    try:
        return {
            "commit": run("rev-parse", "HEAD").strip(),
            "dirty": bool(run("status", "--porcelain", "--untracked-files=no").strip()),
        }
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def percentiles(ms: list[float]) -> tuple[float, float]:
    a = np.sort(np.asarray(ms, dtype=float))
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def subject_identity(subject: str) -> int:
    """`SYN-000000042` → 42 (datasets::subject_id)."""
    if not subject.startswith("SYN-"):
        raise ValueError(f"not a synthetic subject id: {subject!r}")
    return int(subject[4:])


def http_point(path: Path, qlabels: np.ndarray, mated: int, truth_top1: np.ndarray) -> dict:
    """Latency percentiles and quality of one loadgen `--results` file."""
    rows = read_jsonl(path)
    n = qlabels.shape[0]
    if len(rows) != n:
        raise SystemExit(f"{path}: {len(rows)} requests, expected {n}")
    top = np.full((n, K), -1, dtype=np.int64)
    seen = np.zeros(n, dtype=bool)
    for r in rows:
        i = r["i"]
        if r["status"] != 200 or r["candidates"] is None:
            raise SystemExit(f"{path}: request {i} answered {r['status']}")
        if r["label"] != int(qlabels[i]):
            raise SystemExit(f"{path}: request {i} carried label {r['label']}, probe is {qlabels[i]}")
        ids = [subject_identity(s) for s in r["candidates"][:K]]
        top[i, : len(ids)] = ids
        seen[i] = True
    if not seen.all():
        raise SystemExit(f"{path}: some probes were not sent")
    p50, p99 = percentiles([r["ms"] for r in rows])
    found = np.array([truth_top1[i] in top[i] for i in range(n)])
    mate = np.array([qlabels[i] in top[i] for i in range(mated)])
    return {
        "p50_ms": p50,
        "p99_ms": p99,
        "mate_hit_rate": float(mate.mean()),
        "recall_vs_exact": float(found.mean()),
        "recall_vs_exact_mated": float(found[:mated].mean()),
        "recall_vs_exact_nonmated": float(found[mated:].mean()) if n > mated else None,
        "probes": n,
        "mated_probes": mated,
    }


def biomatch_points(
    raw: Path, qlabels, mated, truth_top1, k_default: int, n: int
) -> tuple[list[dict], dict, dict]:
    """biomatch's operating points (in-process and HTTP), the diagnostics, the build run."""
    runs = read_jsonl(raw / "biomatch-inprocess.jsonl")
    build = next((r for r in runs if r["label"].startswith("build-")), None)
    if build is None:
        raise SystemExit("no index build run in biomatch-inprocess.jsonl")
    idx = build["result"]["index"]
    shards = idx["shards"]
    build_s = idx["build_seconds"]
    variant = f"{idx['factory']}, {shards} shards, exact fp16 re-rank of k' per shard"
    machine_info = build["result"]["machine"]
    lib = f"biomatch {machine_info['kernel']}, FAISS {machine_info.get('faiss_kernels', 'avx2')}"
    mem = {m["server"]: m for m in read_jsonl(raw / "server-memory.jsonl")}
    empty = mem["empty"]["vm_rss"]

    def rss_delta(name: str) -> dict:
        m = mem[name]
        return {
            "rss_delta_bytes_per_template": (m["vm_rss"] - empty) / n,
            "rss_anon_delta_bytes_per_template": (m["rss_anon"] - mem["empty"]["rss_anon"]) / n,
            "rss_file_delta_bytes_per_template": (m["rss_file"] - mem["empty"]["rss_file"]) / n,
        }

    def by(k: int, threads_one: bool) -> dict:
        for r in runs:
            if r["k_prime"] == k and (r["rayon_threads"] == 1) == threads_one:
                return r["result"]
        raise SystemExit(f"no in-process run for k'={k} ({'1' if threads_one else 'all'} threads)")

    ks = sorted({r["k_prime"] for r in runs})
    points = []
    for k in ks:
        one, every = by(k, True), by(k, False)
        common = {
            "variant": variant,
            "param": "k_prime_per_shard",
            "value": k,
            "k_prime_total": k * shards,
            "build_s": build_s,
            "index_bytes_per_template": one["bytes_per_template"],
            "index_only_bytes_per_template": idx["index_bytes_per_template"],
            "library": lib,
        }
        points.append(
            {
                "system": "biomatch",
                "mode": "in-process",
                **common,
                "p50_ms": one["p50_ms"],
                "p99_ms": one["p99_ms"],
                "batch_qps": every["batch_qps"],
                "batch_threads": every["machine"]["threads"],
                "batch_qps_1_thread": one["batch_qps"],
                "p50_ms_all_threads": every["p50_ms"],
                "rss_delta_bytes_per_template": None,
                "mate_hit_rate": one["mate_hit_rate"],
                "recall_vs_exact": one["top1_recall_vs_exact"],
                "recall_vs_exact_reference": "biomatch exact search (fp16 templates)",
                "recall_mates_vs_exact": one["recall_vs_exact"],
                "rank1_hit_rate": one["rank1_hit_rate"],
                "probes": one["mated_probes"] + one["nonmated_probes"],
                "mated_probes": one["mated_probes"],
            }
        )
        http = raw / f"http-index-k{k}.jsonl"
        if http.exists():
            points.append(
                {
                    "system": "biomatch",
                    "mode": "http",
                    **common,
                    **http_point(http, qlabels, mated, truth_top1),
                    "batch_qps": None,
                    **rss_delta(f"k{k}"),
                    "client": "loadgen, 1 connection, sequential, keep-alive",
                }
            )
    # Exact search: in-process from the default k' runs (it runs as their baseline).
    one, every = by(k_default, True), by(k_default, False)
    points.append(
        {
            "system": "biomatch-exact",
            "mode": "in-process",
            "variant": "exact scan of fp16 templates (AVX2/F16C), rayon over row ranges",
            "param": "exact",
            "value": None,
            "build_s": 0.0,
            "index_bytes_per_template": one["bytes_per_template"] - idx["index_bytes_per_template"],
            "library": lib,
            "p50_ms": one["exact_p50_ms"],
            "p99_ms": one["exact_p99_ms"],
            "batch_qps": every["exact_batch_qps"],
            "batch_threads": every["machine"]["threads"],
            "batch_qps_1_thread": one["exact_batch_qps"],
            "p50_ms_all_threads": every["exact_p50_ms"],
            "rss_delta_bytes_per_template": None,
            "mate_hit_rate": one["exact_mate_hit_rate"],
            "recall_vs_exact": 1.0,
            "recall_vs_exact_reference": "itself",
            "probes": one["mated_probes"] + one["nonmated_probes"],
            "mated_probes": one["mated_probes"],
        }
    )
    http = raw / "http-exact.jsonl"
    if http.exists():
        points.append(
            {
                "system": "biomatch-exact",
                "mode": "http",
                "variant": "exact scan of fp16 templates, rayon over row ranges (all threads)",
                "param": "exact",
                "value": None,
                "build_s": 0.0,
                "index_bytes_per_template": points[-1]["index_bytes_per_template"],
                "library": lib,
                **http_point(http, qlabels, mated, truth_top1),
                "batch_qps": None,
                **rss_delta(f"k{k_default}-after-exact"),
                "client": "loadgen, 1 connection, sequential, keep-alive",
            }
        )
    # Diagnostic HTTP runs of the default k′: the same server with one audit setting changed.
    diagnostics = {}
    for suffix, key, base_name, note in [
        (
            "audit-tmpfs",
            "http_audit_on_tmpfs",
            "audit_on_data_disk",
            "the same server with its audit log on tmpfs (fsync free): what the durable "
            "audit record of every request costs; not a setting to deploy",
        ),
        (
            "audit-batched",
            "http_audit_reads_batched",
            "audit_durable",
            "the same server with audit_reads = \"batched\": a read's record is sealed "
            "(fsynced) by the audit thread within 1 s instead of before its answer",
        ),
        (
            "audit-batched-faiss-avx2",
            "http_audit_reads_batched_faiss_avx2",
            "audit_durable",
            "audit_reads = \"batched\" again with BIOMATCH_FAISS_SIMD=avx2: the linked AVX2 "
            "FAISS build instead of the AVX-512 one loaded at run time",
        ),
    ]:
        diag = raw / f"http-index-k{k_default}-{suffix}.jsonl"
        if not diag.exists():
            continue
        d = http_point(diag, qlabels, mated, truth_top1)
        base = next(p for p in points if p["mode"] == "http" and p.get("value") == k_default)
        diagnostics[key] = {
            "k_prime_per_shard": k_default,
            "p50_ms": d["p50_ms"],
            "p99_ms": d["p99_ms"],
            "recall_vs_exact": d["recall_vs_exact"],
            "mate_hit_rate": d["mate_hit_rate"],
            f"p50_ms_{base_name}": base["p50_ms"],
            f"p99_ms_{base_name}": base["p99_ms"],
            "note": note,
        }
    # The default point on one thread with the linked AVX2 FAISS build (only where the AVX-512
    # build served the runs above).
    avx2 = read_jsonl(raw / "biomatch-inprocess-faiss-avx2.jsonl") if (
        raw / "biomatch-inprocess-faiss-avx2.jsonl"
    ).exists() else []
    if avx2:
        one, d = by(k_default, True), avx2[0]["result"]
        diagnostics["inprocess_faiss_avx2"] = {
            "k_prime_per_shard": k_default,
            "p50_ms": d["p50_ms"],
            "p99_ms": d["p99_ms"],
            "mate_hit_rate": d["mate_hit_rate"],
            "p50_ms_faiss_avx512": one["p50_ms"],
            "p99_ms_faiss_avx512": one["p99_ms"],
            "speedup_p50_avx512_vs_avx2": d["p50_ms"] / one["p50_ms"],
            "note": "biomatch in-process, one thread, the default k', on the linked AVX2 FAISS "
            "build (BIOMATCH_FAISS_SIMD=avx2) instead of the AVX-512 build loaded at run time",
        }
    return points, diagnostics, build


def comparison(points: list[dict], diagnostics: dict, min_mate: float = 0.99) -> dict:
    """The issue's side-by-side test: biomatch's end-to-end (HTTP) p50 against the fastest
    peer's in-process p50, and bytes per template, among points with mate hit rate ≥ min_mate."""
    good = [p for p in points if p["mate_hit_rate"] is not None and p["mate_hit_rate"] >= min_mate]
    peers = [p for p in good if not p["system"].startswith("biomatch") and p["mode"] == "in-process"]
    http = [p for p in good if p["system"] == "biomatch" and p["mode"] == "http"]
    if not peers or not http:
        return {"min_mate_hit_rate": min_mate, "note": "no peer or no biomatch HTTP point qualifies"}
    fastest = min(peers, key=lambda p: p["p50_ms"])
    ours = min(http, key=lambda p: p["p50_ms"])
    out = {
        "min_mate_hit_rate": min_mate,
        "fastest_peer": {k: fastest[k] for k in ("system", "variant", "param", "value", "p50_ms")},
        "biomatch_http": {k: ours[k] for k in ("param", "value", "p50_ms", "p99_ms")},
        "http_p50_over_fastest_peer_p50": ours["p50_ms"] / fastest["p50_ms"],
    }
    batched = diagnostics.get("http_audit_reads_batched")
    if batched and batched["mate_hit_rate"] >= min_mate:
        out["http_audit_reads_batched_p50_ms"] = batched["p50_ms"]
        out["http_audit_reads_batched_p50_over_fastest_peer_p50"] = (
            batched["p50_ms"] / fastest["p50_ms"]
        )
    smallest = min(good, key=lambda p: p["index_bytes_per_template"])
    out["smallest_bytes_per_template"] = {
        "system": smallest["system"],
        "variant": smallest["variant"],
        "index_bytes_per_template": smallest["index_bytes_per_template"],
    }
    out["biomatch_index_bytes_per_template"] = ours["index_bytes_per_template"]
    return out


def plot(points: list[dict], doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(19, 7), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    series: dict[tuple[str, str], list[dict]] = {}
    for p in points:
        series.setdefault((p["system"], p["mode"]), []).append(p)
    # One colour per system; over HTTP the same colour, dashed, square markers.
    colours = plt.get_cmap("tab10")
    systems = list(dict.fromkeys(key[0] for key in series))
    style = {}
    for key in series:
        style[key] = {
            "color": colours(systems.index(key[0]) % 10),
            "marker": "o" if key[1] == "in-process" else "s",
            "linestyle": "-" if key[1] == "in-process" else "--",
            "linewidth": 2.4 if key[0].startswith("biomatch") else 1.3,
        }
    diag = doc["diagnostics"].get("http_audit_on_tmpfs")
    for ax, metric, label in (
        (axes[0], "recall_vs_exact", "recall vs exact (exact top-1 in top 10)"),
        (axes[1], "mate_hit_rate", "mate hit rate (mate in top 10)"),
    ):
        for key, ps in series.items():
            xs = [p[metric] for p in ps]
            ys = [p["p50_ms"] for p in ps]
            name = f"{key[0]} ({key[1]})" if key[1] != "in-process" else key[0]
            ax.plot(xs, ys, label=name, **style[key])
            for p in ps:
                if p["value"] is not None:
                    ax.annotate(
                        str(p["value"]),
                        (p[metric], p["p50_ms"]),
                        textcoords="offset points",
                        xytext=(4, 3),
                        fontsize=7,
                        color=style[key]["color"],
                    )
        if diag:
            ax.plot(
                [diag[metric]],
                [diag["p50_ms"]],
                marker="*",
                markersize=11,
                linestyle="none",
                color=colours(systems.index("biomatch")),
                label="biomatch (http, audit log on tmpfs: diagnostic)",
            )
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("single-query latency p50, ms (one thread; HTTP: one client)")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8, frameon=False)
    axes[0].set_title("latency vs recall (labels: k′ / nprobe / ef)", fontsize=10)
    axes[1].set_title("latency vs mate hit rate", fontsize=10)

    # Bytes per template: one bar pair per system (the first operating point with each figure).
    names, index_b, rss_b = [], [], []
    for key, ps in series.items():
        names.append(f"{key[0]} ({key[1]})" if key[1] != "in-process" else key[0])
        index_b.append(ps[0]["index_bytes_per_template"])
        rss = [p["rss_delta_bytes_per_template"] for p in ps if p.get("rss_delta_bytes_per_template")]
        rss_b.append(max(rss) if rss else 0.0)
    y = np.arange(len(names))
    ax = axes[2]
    ax.barh(y - 0.2, index_b, height=0.4, label="index size (serialised; biomatch: index + fp16 + metadata)")
    ax.barh(y + 0.2, rss_b, height=0.4, label="RSS growth (max over its points)")
    for yi, (a, b) in enumerate(zip(index_b, rss_b)):
        ax.text(a, yi - 0.2, f" {a:.0f}", va="center", fontsize=7)
        if b:
            ax.text(b, yi + 0.2, f" {b:.0f}", va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("bytes per template")
    ax.set_title("memory", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09), frameon=False)
    ax.grid(True, axis="x", alpha=0.3)

    m, d = doc["machine"], doc["data"]
    load = m["loadavg_start"]
    fig.suptitle(
        f"1:N identify, {d['subjects']:,} templates (d = {d['dim']}, clustered: {d['families']:,} "
        f"families), {d['mated_probes']} mated + {d['nonmated_probes']} non-mated probes — "
        f"{m['cpu_model']}, {m['cores_usable']} cores"
        + (f", load avg at start {load[0]:.1f}" if load else ""),
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    tmp = path.with_suffix(".png.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", required=True)
    ap.add_argument("--raw", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--gallery", required=True)
    ap.add_argument("--probes", required=True)
    ap.add_argument("--k-default", type=int, default=32)
    args = ap.parse_args()
    raw = args.raw

    probes = read_bmvec(args.probes)
    qlabels = probes.labels.astype(np.int64)
    mated = int(probes.meta["mated"])
    truth = np.load(raw / "truth.npz")
    if not np.array_equal(truth["qlabels"], qlabels):
        raise SystemExit("truth.npz belongs to other probes")
    truth_top1 = truth["top1"]
    pop = probes.meta["population"]
    n = int(pop["identities"])
    # The gallery is only checked (CRC, count), not kept.
    gallery = read_bmvec(args.gallery)
    if len(gallery) != n or gallery.meta["population"] != pop:
        raise SystemExit("the gallery and the probes come from different populations")
    del gallery

    ours, diagnostics, build = biomatch_points(raw, qlabels, mated, truth_top1, args.k_default, n)
    peers = read_jsonl(raw / "peers.jsonl")
    points = ours + peers
    for p in points:
        p.setdefault("batch_threads", None)
    clustered = pop.get("clustered") or {}
    doc = {
        "schema": SCHEMA,
        "scale": args.scale,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "machine": machine(raw),
        "software": {
            "python": platform.python_version(),
            "faiss-cpu": version("faiss-cpu"),
            "hnswlib": version("hnswlib"),
            "usearch": version("usearch"),
            "numpy": version("numpy"),
            "biomatch_kernel": build["result"]["machine"]["kernel"],
            "biomatch_faiss_kernels": build["result"]["machine"].get("faiss_kernels", "avx2"),
        },
        "data": {
            "generator": "biomatch-datasets (eval-synthetic's population)",
            "subjects": n,
            "dim": pop["dim"],
            "seed": pop["seed"],
            "genuine_mean": pop["genuine_mean"],
            "families": clustered.get("families"),
            "within_family_cosine": clustered.get("within_family_cosine"),
            "mated_probes": mated,
            "nonmated_probes": int(probes.meta["nonmated"]),
            "probe_seed": probes.meta["probe_seed"],
            "k": K,
        },
        "ground_truth": "FAISS IDMap,Flat, inner product on the f32 vectors",
        "results": points,
        "diagnostics": diagnostics,
        "comparison": comparison(points, diagnostics),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"bench-{args.scale}.json"
    png_path = args.out / f"bench-{args.scale}.png"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, json_path)
    plot(points, doc, png_path)

    def brief(p: dict) -> dict:
        keep = ("system", "mode", "param", "value", "p50_ms", "p99_ms", "batch_qps")
        out = {k: p[k] for k in keep}
        out["recall"] = p["recall_vs_exact"]
        out["mate"] = p["mate_hit_rate"]
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}

    summary = {
        "bench": str(json_path),
        "plot": str(png_path),
        "scale": args.scale,
        "subjects": n,
        "points": len(points),
        "loadavg_start": doc["machine"]["loadavg_start"],
        "comparison": doc["comparison"],
        "results": [brief(p) for p in points],
    }
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
