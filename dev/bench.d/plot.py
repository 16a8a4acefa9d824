"""PNG plots from dev/bench runs: `dev/bench.d/plot.py RESULTS_DIR... [-o OUT_DIR]`.

Reads each RESULTS_DIR/results.json and the raw samples beside it (runs/*.latency.json, the
RSS timelines in the rows). With several directories, each scenario's rows for one (tool,
sink) come from the directory that has the most of them.
Writes (to OUT_DIR, default the first RESULTS_DIR):
  latency-cdf.png   end-to-end latency CDF per churn rate, kubewire vs the peer (and NATS,
                    and the bare-watch floor)
  rss-relist.png    RSS over time during the initial sync of the largest N
  throughput.png    relist events/s per tool and N, and churn delivered/s per rate
Run it in the bench's Python environment (dev/checker/run creates it):
  KUBEWIRE_PY_REQUIREMENTS=requirements-bench.txt dev/checker/run "$PWD/dev/bench.d/plot.py" target/bench/<run>... -o docs/benchmarks
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"kubewire": "tab:blue", "otelcol": "tab:orange", "kubewire-nats": "tab:green", "watch": "grey"}


def label(row):
    return row["tool"] + ("-nats" if row.get("sink") == "nats" else "")


def latency_cdf(res, rdir, out):
    churn = [r for k in ("churn_kafka", "churn_nats") for r in res["scenarios"].get(k, {}).get("rows", []) if r.get("latency_file")]
    if not churn:
        return None
    rates = sorted({r["rate"] for r in churn})
    fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 4), squeeze=False)
    for ax, rate in zip(axes[0], rates):
        for r in churn:
            if r["rate"] != rate:
                continue
            lat = json.loads((Path(r["_dir"]) / r["latency_file"]).read_text())
            if not lat:
                continue
            ys = [(i + 1) / len(lat) for i in range(len(lat))]
            name = label(r)
            ax.plot(lat, ys, color=COLORS.get(name), alpha=0.8, lw=1,
                    label=f"{name} r{r['rep']}")
        # symlog: the bare watch often sees the change before the writer gets its response
        # (negative latency); linear within ±1 ms, logarithmic beyond.
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(-10, 1000)
        ax.set_xlabel("write ack → consumer receipt (ms, symlog)")
        ax.set_ylabel("fraction of events")
        ax.set_title(f"{rate} writes/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "latency-cdf.png"
    fig.savefig(p, dpi=110)
    return p


def rss_relist(res, out):
    rows = [r for k in ("relist_kafka", "relist_nats") for r in res["scenarios"].get(k, {}).get("rows", []) if r.get("rss_timeline")]
    if not rows:
        return None
    n = max(r["n"] for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if r["n"] != n:
            continue
        ts = [t for t, _ in r["rss_timeline"]]
        rss = [v / 2**20 for _, v in r["rss_timeline"]]
        name = label(r)
        ax.plot(ts, rss, color=COLORS.get(name), alpha=0.8, lw=1, label=f"{name} r{r['rep']}")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"RSS during the initial sync of {n} ConfigMaps")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "rss-relist.png"
    fig.savefig(p, dpi=110)
    return p


def throughput(res, out):
    relist = [r for k in ("relist_kafka", "relist_nats") for r in res["scenarios"].get(k, {}).get("rows", []) if r.get("seconds")]
    churn = [r for k in ("churn_kafka", "churn_nats") for r in res["scenarios"].get(k, {}).get("rows", []) if r.get("delivered")]
    if not relist and not churn:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted({label(r) for r in relist})
    ns = sorted({r["n"] for r in relist})
    w = 0.8 / max(1, len(names) + 1)
    floors = res["scenarios"].get("relist_kafka", {}).get("raw_list_seconds") or {}
    for j, n in enumerate(ns):
        fl = floors.get(str(n)) or floors.get(n)
        if fl:
            a.bar(j - 0.4 + w / 2, n / sorted(fl)[len(fl) // 2], w, color="grey", label="raw LIST" if j == 0 else None)
        for i, name in enumerate(names):
            vals = sorted(r["n"] / r["seconds"] for r in relist if label(r) == name and r["n"] == n)
            if vals:
                a.bar(j - 0.4 + w * (i + 1.5), vals[len(vals) // 2], w, color=COLORS.get(name), label=name if j == 0 else None,
                      yerr=[[vals[len(vals) // 2] - vals[0]], [vals[-1] - vals[len(vals) // 2]]], capsize=3)
    a.set_xticks(range(len(ns)), [f"{n:,}" for n in ns])
    a.set_xlabel("objects")
    a.set_ylabel("objects/s (median, min–max)")
    a.set_title("Initial sync throughput")
    a.legend(fontsize=8)
    for name in sorted({label(r) for r in churn}):
        pts = [(r["rate"], r["delivered"] / r["window_seconds"]) for r in churn if label(r) == name]
        b.scatter([p[0] for p in pts], [p[1] for p in pts], color=COLORS.get(name), label=name, alpha=0.8)
    if churn:
        m = max(r["rate"] for r in churn)
        b.plot([0, m], [0, m], color="grey", ls=":", lw=1, label="target")
    b.set_xlabel("target writes/s")
    b.set_ylabel("events delivered/s over the window")
    b.set_title("Churn throughput")
    b.legend(fontsize=8)
    fig.tight_layout()
    p = out / "throughput.png"
    fig.savefig(p, dpi=110)
    return p


def merge(dirs):
    """Per scenario and (tool, sink), the rows of the directory that has the most of them."""
    res = {"scenarios": {}}
    best = {}
    for d in dirs:
        one = json.loads((Path(d) / "results.json").read_text())
        for key, sc in one["scenarios"].items():
            if "rows" not in sc:
                continue
            groups = {}
            for r in sc["rows"]:
                groups.setdefault((r["tool"], r.get("sink")), []).append(dict(r, _dir=str(d)))
            for g, rows in groups.items():
                if len(rows) > len(best.get((key, g), [])):
                    best[(key, g)] = rows
            mine = res["scenarios"].setdefault(key, {"rows": []})
            if sc.get("raw_list_seconds") and not mine.get("raw_list_seconds"):
                mine["raw_list_seconds"] = sc["raw_list_seconds"]
    for (key, _), rows in best.items():
        res["scenarios"][key]["rows"].extend(rows)
    return res


def main():
    args = sys.argv[1:]
    out = None
    if "-o" in args:
        i = args.index("-o")
        out = Path(args[i + 1])
        del args[i : i + 2]
    dirs = [Path(a) for a in args]
    out = out or dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    res = merge(dirs)
    rdir = dirs[0]
    for f in (lambda: latency_cdf(res, rdir, out), lambda: rss_relist(res, out), lambda: throughput(res, out)):
        p = f()
        if p:
            print(p)


if __name__ == "__main__":
    main()
