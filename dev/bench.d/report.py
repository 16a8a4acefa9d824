"""Markdown tables from dev/bench results: `dev/bench.d/report.py RESULTS_DIR...`.

Every cell is `median [min, max]` over the repetitions of that run. Several result
directories may be given (e.g. one run for relist/restart, one for churn/NATS); their
scenarios are merged, the later directory winning for a scenario present in both.
"""

import json
import statistics
import sys
from pathlib import Path


def fmt(m, scale=1.0, digits=2, unit=""):
    if not m:
        return "—"
    f = f"{{:.{digits}f}}"
    med, lo, hi = (m[k] * scale for k in ("median", "min", "max"))
    if m.get("n", 1) == 1:
        return f.format(med) + unit
    return f"{f.format(med)}{unit} [{f.format(lo)}, {f.format(hi)}]"


def mmm(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


MIB = 1 / 2**20


def pipeline(sc):
    p = sc.get("pipeline", {}).get("figures")
    if not p:
        return
    print("| fixture | line bytes | CloudEvent bytes | kubewire events/s/core | raw serde_json events/s/core | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for f in p:
        print(f"| {f['fixture']} | {f['input_bytes']} | {f['output_bytes']} | {fmt(f['pipeline_events_per_s'], digits=0)} | "
              f"{fmt(f['raw_events_per_s'], digits=0)} | {fmt(f['ratio'])} |")
    print()


def relist(sc, key):
    r = sc.get(key)
    if not r or "summary" not in r:
        return
    tools = [t for t in ("kubewire", "otelcol") if any(t in s for s in r["summary"].values())]
    print(f"**{key}**\n")
    print("| N | raw LIST (s) | " + " | ".join(f"{t} (s) | {t} ÷ raw LIST | {t} CPU-s | {t} peak RSS (MiB)" for t in tools) + " |")
    print("|---:|---:|" + "---:|---:|---:|---:|" * len(tools))
    for n, s in r["summary"].items():
        cells = [fmt(s["raw_list_seconds"])]
        for t in tools:
            x = s[t]
            cells += [fmt(x["seconds"]), fmt(x["ratio_to_raw_list"]), fmt(x["cpu_seconds"]), fmt(x["peak_rss"], MIB, 0)]
        print(f"| {int(n):,} | " + " | ".join(cells) + " |")
    print()
    if len(tools) == 2:
        print("| N | kubewire ÷ otelcol time | kubewire ÷ otelcol CPU | kubewire ÷ otelcol peak RSS |")
        print("|---:|---:|---:|---:|")
        for n in r["summary"]:
            rows = r["rows"]
            q = {"seconds": [], "cpu_seconds_sync": [], "peak_rss": []}
            for rep in sorted({x["rep"] for x in rows}):
                a = [x for x in rows if x["tool"] == "kubewire" and str(x["n"]) == str(n) and x["rep"] == rep]
                b = [x for x in rows if x["tool"] == "otelcol" and str(x["n"]) == str(n) and x["rep"] == rep]
                if a and b:
                    for k in q:
                        if a[0].get(k) and b[0].get(k):
                            q[k].append(a[0][k] / b[0][k])
            print(f"| {int(n):,} | {fmt(mmm(q['seconds']))} | {fmt(mmm(q['cpu_seconds_sync']))} | {fmt(mmm(q['peak_rss']))} |")
        print()
    mem = r.get("memory")
    if mem:
        print("| tool | RSS, 0 objects (MiB) | " + " | ".join(f"RSS, {int(n):,} (MiB) | bytes/object over 0" for n in r["summary"]) + " |")
        print("|---|---:|" + "---:|---:|" * len(r["summary"]))
        for t, m in mem.items():
            cells = [fmt(m["rss_0"], MIB, 1)]
            for n in r["summary"]:
                cells += [fmt(m.get(f"rss_{n}"), MIB, 1), f"{m.get(f'bytes_per_object_{n}', 0):,.0f}"]
            print(f"| {t} | " + " | ".join(cells) + " |")
        print()


def churn(sc, key):
    r = sc.get(key)
    if not r or "summary" not in r:
        return
    print(f"**{key}**\n")
    print("| writes/s | tool | achieved writes/s | delivered | lost | p50 ms | p90 ms | p99 ms | max ms | CPU-s / 10k events | peak RSS (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rate, s in r["summary"].items():
        for t, x in s.items():
            if t == "kubewire_vs_otelcol":
                continue
            print(f"| {rate} | {t} | {fmt(x['achieved_rate'], digits=0)} | {fmt(x['delivered'], digits=0)} | {fmt(x['lost'], digits=0)} | "
                  f"{fmt(x['latency_p50_ms'], digits=1)} | {fmt(x['latency_p90_ms'], digits=1)} | {fmt(x['latency_p99_ms'], digits=1)} | "
                  f"{fmt(x['latency_max_ms'], digits=1)} | {fmt(x['cpu_seconds_per_10k_events'])} | {fmt(x['peak_rss'], MIB, 1)} |")
    print()
    ratios = {rate: s.get("kubewire_vs_otelcol") for rate, s in r["summary"].items() if s.get("kubewire_vs_otelcol")}
    if ratios:
        print("| writes/s | kubewire ÷ otelcol events per CPU-second | kubewire ÷ otelcol peak RSS | kubewire ÷ otelcol p99 |")
        print("|---:|---:|---:|---:|")
        for rate, q in ratios.items():
            print(f"| {rate} | {fmt(q['events_per_cpu_second'])} | {fmt(q['peak_rss'])} | {fmt(q['p99'])} |")
        print()


def restart(sc):
    r = sc.get("restart")
    if not r:
        return
    rows = r["rows"]
    print("| tool | LIST requests on restart | time to first new event (s) | events re-sent after restart (3 s window) |")
    print("|---|---:|---:|---:|")
    for t in ("kubewire", "otelcol"):
        mine = [x for x in rows if x["tool"] == t and "seconds_to_first_new_event" in x]
        if not mine:
            continue
        lists = [x.get("list_requests", x.get("apiserver_list_requests")) for x in mine]
        print(f"| {t} | {fmt(mmm(lists), digits=0)} | {fmt(mmm([x['seconds_to_first_new_event'] for x in mine]))} | "
              f"{fmt(mmm([x['events_after_restart'] for x in mine]), digits=0)} |")
    print()


def main():
    sc = {}
    for d in sys.argv[1:]:
        res = json.loads((Path(d) / "results.json").read_text())
        sc.update(res["scenarios"])
    pipeline(sc)
    relist(sc, "relist_kafka")
    relist(sc, "relist_nats")
    churn(sc, "churn_kafka")
    churn(sc, "churn_nats")
    restart(sc)


if __name__ == "__main__":
    main()
