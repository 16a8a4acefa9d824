"""dev/bench: end-to-end benchmarks of kubewire and its peer (the OpenTelemetry Collector with
the k8sobjects receiver and the kafka exporter) on the services of dev/testenv.

Run through `dev/bench` (which prepares the Python environment, the load generator and the
release build). Every figure is written as JSON to <out>/results.json, with the raw samples
(per-event latencies, RSS timelines) beside it for dev/bench.d/plot.py.

Scenarios (--scenarios, comma-separated; default all):
  pipeline  cargo bench --bench pipeline (the micro-benchmark, ratio vs raw serde_json)
  relist    N ConfigMaps exist (--sizes); start the tool with no state; time until the last
            object's event is read back by a consumer; vs a raw paginated LIST (500/page)
  memory    RSS after the initial sync of 0 and each N watched objects (from the relist runs)
  churn     writes at fixed rates (--rates) for --duration; latency write-ack → consumer,
            CPU-seconds per 10k events, peak RSS
  restart   SIGTERM, writes while down, restart: LIST requests and time to the first new event
  nats      kubewire → NATS JetStream: relist and churn rows (nats-relist, nats-churn: one of them)
Each tool/scenario cell is repeated --reps times, tools alternating; figures are median
[min, max] of the repetitions.
"""

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_D = ROOT / "dev" / "bench.d"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

NS_EMPTY = "kwb-empty"
NS_CHURN = "kwb-churn"


def ns_for(n):
    return f"kwb-n{n}"


def log(*a):
    print(f"[bench {time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- environment


def load_env():
    env_file = ROOT / ".testenv" / "env"
    if not env_file.exists():
        sys.exit("dev/bench: .testenv/env missing: run dev/testenv up first")
    env = dict(os.environ)
    for line in env_file.read_text().splitlines():
        m = re.match(r'export (\w+)="(.*)"$', line)
        if m:
            env[m.group(1)] = m.group(2).replace("$PATH", env.get("PATH", ""))
    return env


ENV = load_env()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def loadgen(*args, check=True):
    cmd = [str(Path(ENV["KWB_LOADGEN"])), *map(str, args)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()[-800:]}")
    out = r.stdout.strip().splitlines()
    return json.loads(out[-1]) if out and out[-1].startswith("{") else r.stdout


def count_objects(ns):
    r = loadgen("list", "-ns", ns, "-limit", 5000)
    return r["items"]


def ensure_objects(ns, n, size):
    have = count_objects(ns) if n else 0
    if n == 0:
        loadgen("create", "-ns", ns, "-n", 0)
        return
    if have >= n:
        log(f"{ns}: {have} objects already there")
        return
    log(f"{ns}: creating {n - have} ConfigMaps (~{size} B of data each)")
    r = loadgen("create", "-ns", ns, "-n", n - have, "-start", have, "-size", size, "-c", 48)
    log(f"{ns}: created {r['created']} in {r['seconds']:.0f}s ({r['per_second']:.0f}/s)")


# ---------------------------------------------------------------- process sampling


CHILDREN = []  # every process started here, stopped at exit (also on SIGTERM / Ctrl-C)


def stop_children():
    for p in CHILDREN:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in CHILDREN:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


class Sampled:
    """A child process with its CPU time and RSS sampled from /proc every `period` s."""

    def __init__(self, cmd, log_path, env=None, period=0.25):
        self.log_path = log_path
        self.logf = open(log_path, "w")
        self.t0 = time.time()
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=env or ENV, start_new_session=True)
        CHILDREN.append(self.proc)
        self.samples = []  # (t since start, rss bytes, cpu seconds)
        self.period = period
        self._stop = threading.Event()
        self.hwm = 0
        self._thr = threading.Thread(target=self._run, daemon=True)
        self._thr.start()

    def read(self):
        pid = self.proc.pid
        try:
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            cpu = (int(parts[11]) + int(parts[12])) / CLK_TCK
            rss = int(parts[21]) * PAGE
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.hwm = max(self.hwm, int(line.split()[1]) * 1024)
            return rss, cpu
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return None

    def _run(self):
        while not self._stop.is_set() and self.proc.poll() is None:
            r = self.read()
            if r:
                self.samples.append((time.time() - self.t0, *r))
            self._stop.wait(self.period)

    def cpu(self):
        r = self.read()
        return r[1] if r else (self.samples[-1][2] if self.samples else 0.0)

    def rss(self):
        r = self.read()
        return r[0] if r else 0

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stop.set()
        self._thr.join()
        self.logf.close()
        return self.proc.returncode

    def alive(self):
        return self.proc.poll() is None


class Consumer:
    """dev/bench.d/consume.py in its own process; reads back what it wrote."""

    def __init__(self, out_path, topic=None, fmt="kubewire", subject=None):
        self.path = out_path
        args = [sys.executable, str(BENCH_D / "consume.py"), "--out", str(out_path), "--format", fmt]
        self.ready = None
        if topic:
            args += ["--brokers", ENV["KAFKA_BROKERS"], "--topic", topic]
        else:
            self.ready = str(out_path) + ".ready"
            args += ["--nats-url", ENV["NATS_URL"], "--subject", subject, "--ready", self.ready]
        self.proc = subprocess.Popen(args, env=ENV, start_new_session=True)
        CHILDREN.append(self.proc)
        self._pos = 0
        self.events = []  # (name, rv, t_ns)
        if self.ready:
            deadline = time.time() + 30
            while not os.path.exists(self.ready) and time.time() < deadline:
                time.sleep(0.05)

    def poll(self):
        try:
            with open(self.path) as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return self.events
        cut = data.rfind("\n") + 1
        self._pos += len(data[:cut].encode())
        for line in data[:cut].splitlines():
            name, rv, t = line.split(" ")
            self.events.append((name, rv, int(t)))
        return self.events

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.poll()
        return self.events


# ---------------------------------------------------------------- Kafka / NATS admin


def kafka_admin():
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": ENV["KAFKA_BROKERS"]})


def create_topic(name, partitions=1):
    from confluent_kafka.admin import NewTopic

    a = kafka_admin()
    fs = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    for f in fs.values():
        f.result(30)


def delete_topics(names):
    if not names:
        return
    a = kafka_admin()
    for f in a.delete_topics(list(names)).values():
        try:
            f.result(30)
        except Exception as e:  # noqa: BLE001 - best effort cleanup
            log("delete topic:", e)


def nats_delete_stream(name):
    import asyncio

    import nats

    async def go():
        nc = await nats.connect(ENV["NATS_URL"])
        js = nc.jetstream()
        try:
            await js.delete_stream(name)
        except Exception:  # noqa: BLE001 - absent is fine
            pass
        await nc.close()

    asyncio.run(go())


# ---------------------------------------------------------------- the tools


class Tool:
    name = "?"

    def __init__(self, args, run_dir):
        self.args = args
        self.run_dir = run_dir


class Kubewire(Tool):
    name = "kubewire"

    def start(self, trial, namespaces, sink, checkpoint=None):
        """sink: ("kafka", topic) or ("nats", stream)."""
        d = self.run_dir / trial
        d.mkdir(parents=True, exist_ok=True)
        self.admin = f"127.0.0.1:{free_port()}"
        if sink[0] == "kafka":
            sink_cfg = {"type": "kafka", "brokers": ENV["KAFKA_BROKERS"], "topic": sink[1], "compression": "zstd"}
        else:
            sink_cfg = {
                "type": "nats",
                "url": ENV["NATS_URL"],
                "subject": "kwbench.{cluster}.{group}.{kind}.{namespace}.{name}",
                "stream": {"name": sink[1], "create": True, "storage": "file"},
            }
        cfg = {
            "clusters": [{"name": "bench"}],
            "resources": [{"resource": "configmaps", "namespaces": namespaces}],
            "sink": sink_cfg,
            # A fresh store per start unless one is given (a retried trial starts clean).
            "checkpoint": {"path": str(checkpoint or (d / f"checkpoint{len(list(d.glob('kubewire*.log')))}.redb"))},
            "admin": {"address": self.admin},
            "log": {"format": "json", "level": "info"},
        }
        path = d / "kubewire.yaml"
        path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        cmd = [os.environ.get("KWB_KUBEWIRE", str(ROOT / "target" / "release" / "kubewire")), "run", "--config", str(path)]
        n = len(list(d.glob("kubewire*.log")))
        return Sampled(cmd, d / f"kubewire{n}.log")

    def list_requests(self):
        import urllib.request

        try:
            text = urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith("kubewire_api_requests_total") and 'verb="list"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


class Otelcol(Tool):
    name = "otelcol"

    @staticmethod
    def binary():
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubewire"
        for p in sorted(cache.glob("otelcol-v*/otelcol-kubewire")):
            return p
        return None

    def start(self, trial, namespaces, sink, initial_state=True, **_):
        d = self.run_dir / trial
        d.mkdir(parents=True, exist_ok=True)
        metrics_port = free_port()
        cfg = {
            "receivers": {
                "k8sobjects": {
                    "auth_type": "kubeConfig",
                    "include_initial_state": initial_state,
                    "objects": [{"name": "configmaps", "mode": "watch", "namespaces": namespaces}],
                }
            },
            "exporters": {
                "kafka": {
                    "brokers": [ENV["KAFKA_BROKERS"]],
                    "logs": {"topic": sink[1], "encoding": self.args.otel_encoding},
                    "producer": {
                        "required_acks": -1,
                        "compression": "zstd",
                        "linger": "10ms",
                        "flush_max_messages": 10000,
                    },
                    # Same guarantee as kubewire's backpressure: wait, never drop, when full.
                    "sending_queue": {"enabled": True, "block_on_overflow": True, "queue_size": 1000},
                    "retry_on_failure": {"enabled": True, "max_elapsed_time": "0s"},
                }
            },
            "service": {
                "telemetry": {
                    "logs": {"level": "info"},
                    "metrics": {"level": "none"},
                },
                "pipelines": {"logs": {"receivers": ["k8sobjects"], "exporters": ["kafka"]}},
            },
        }
        del metrics_port
        path = d / "otelcol.yaml"
        path.write_text(json.dumps(cfg, indent=2))
        n = len(list(d.glob("otelcol*.log")))
        return Sampled([str(self.binary()), "--config", str(path)], d / f"otelcol{n}.log")


class WatchFloor(Tool):
    """Not a tool: a bare watch from the load generator, the latency floor of churn."""

    name = "watch"

    def start(self, trial, namespaces, sink, **_):
        d = self.run_dir / trial
        d.mkdir(parents=True, exist_ok=True)
        cmd = [ENV["KWB_LOADGEN"], "watch", "-ns", namespaces[0], "-out", str(self.run_dir / f"{trial}.events")]
        return Sampled(cmd, d / "watch.log")


class FileConsumer(Consumer):
    """Reads the lines another process (the bare watch) writes; starts nothing."""

    def __init__(self, out_path):
        self.path = out_path
        self.proc = None
        self._pos = 0
        self.events = []

    def stop(self):
        self.poll()
        return self.events


# ---------------------------------------------------------------- statistics


def service_pids():
    d = Path(ENV["TESTENV_DIR"]) / "pids"
    out = {}
    for name in ("etcd", "apiserver", "kafka", "nats"):
        try:
            out[name] = (d / f"{name}.pid").read_text().strip()
        except OSError:
            out[name] = None
    return out


def undisturbed(fn, *a, attempts=3):
    """Runs one trial; if a dev/testenv service restarted meanwhile (other engineers' outage
    tests share these services), the trial is flagged and run again."""
    for i in range(attempts):
        before = service_pids()
        row = fn(*a)
        after = service_pids()
        changed = [k for k in before if before[k] != after[k]]
        if not changed:
            return row
        row["disturbed"] = changed
        log(f"a service restarted during the trial ({', '.join(changed)}); {'retrying' if i + 1 < attempts else 'keeping it, flagged'}")
    return row


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def mmm(xs):
    """median, min, max of the non-None values."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# ---------------------------------------------------------------- scenarios


class Bench:
    def __init__(self, args):
        self.args = args
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out = Path(args.out or ROOT / "target" / "bench" / stamp)
        self.out.mkdir(parents=True, exist_ok=True)
        self.run_dir = self.out / "runs"
        self.run_dir.mkdir(exist_ok=True)
        self.topics = set()
        self.results = {"started": stamp, "machine": machine(), "args": vars(args), "scenarios": {}}
        self.tools = [Kubewire(args, self.run_dir)]
        if args.peer:
            if Otelcol.binary():
                self.tools.append(Otelcol(args, self.run_dir))
            else:
                log("peer: no otelcol-kubewire binary in the cache (dev/testenv up otelcol builds it); peer rows skipped")
                self.results["peer_missing"] = "otelcol-kubewire not built"
        self.seq = 0

    def save(self):
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2, default=str))

    def topic(self, tool, what):
        self.seq += 1
        t = f"kwbench.{tool}.{what}.{self.results['started']}.{self.seq}"
        create_topic(t)
        self.topics.add(t)
        return t

    def order(self, rep):
        """Tools alternate who goes first, so drift in the machine's load hits both."""
        return self.tools if rep % 2 == 0 else list(reversed(self.tools))

    # -- relist + memory

    def raw_list(self, ns):
        r = loadgen("list", "-ns", ns, "-limit", 500)
        return r

    def wait_all(self, consumer, proc, n, timeout, settle=None):
        """Until `n` distinct names were received; returns (t_last_ns or None)."""
        deadline = time.time() + timeout
        seen = set()
        last = None
        while time.time() < deadline:
            evs = consumer.poll()
            seen = {e[0] for e in evs}
            if len(seen) >= n:
                last = max(t for _, _, t in evs)
                break
            if not proc.alive():
                log("tool exited early; see", proc.log_path)
                break
            time.sleep(0.1)
        return last, len(seen)

    def relist_once(self, tool, n, rep, sink="kafka"):
        ns = ns_for(n) if n else NS_EMPTY
        trial = f"relist-{tool.name}-{sink}-{n}-r{rep}"
        if sink == "kafka":
            topic = self.topic(tool.name, f"relist{n}")
            cons = Consumer(self.run_dir / f"{trial}.events", topic=topic,
                            fmt="kubewire" if tool.name == "kubewire" else self.args.otel_encoding)
            sink_spec = ("kafka", topic)
        else:
            stream = f"KWBENCH{self.seq}"
            self.seq += 1
            nats_delete_stream(stream)
            cons = Consumer(self.run_dir / f"{trial}.events", subject="kwbench.>")
            sink_spec = ("nats", stream)
        time.sleep(0.5)
        t0 = time.time_ns()
        proc = tool.start(trial, [ns], sink_spec)
        row = {"tool": tool.name, "sink": sink, "n": n, "rep": rep}
        try:
            if n:
                last, got = self.wait_all(cons, proc, n, timeout=self.args.relist_timeout)
                row["received_distinct"] = got
                row["seconds"] = (last - t0) / 1e9 if last else None
                if last is None:
                    log(f"{trial}: only {got}/{n} objects received before the timeout")
            cpu_sync = proc.cpu()
            time.sleep(self.args.settle)
            row["rss_after_sync"] = proc.rss()
            row["cpu_seconds_sync"] = cpu_sync
            row["peak_rss"] = proc.hwm
            if tool.name == "kubewire":
                row["list_requests"] = tool.list_requests()
            evs = cons.poll()
            row["events_received"] = len(evs)
        finally:
            proc.stop()
            cons.stop()
            if sink == "nats":
                nats_delete_stream(sink_spec[1])
        row["rss_timeline"] = [(round(t, 2), r) for t, r, _ in proc.samples]
        if row.get("seconds"):
            log(f"{trial}: {row['seconds']:.2f}s, rss {row['rss_after_sync'] / 2**20:.1f} MiB, peak {row['peak_rss'] / 2**20:.1f} MiB")
        else:
            log(f"{trial}: rss {row['rss_after_sync'] / 2**20:.1f} MiB")
        return row

    def scenario_relist(self, sink="kafka"):
        tools = self.tools if sink == "kafka" else [self.tools[0]]
        rows, floors = [], {}
        for n in [0] + self.args.sizes:
            ensure_objects(ns_for(n) if n else NS_EMPTY, n, self.args.object_size)
        for n in [0] + self.args.sizes:
            for rep in range(self.args.reps):
                if n:
                    r = self.raw_list(ns_for(n))
                    floors.setdefault(n, []).append(r["seconds"])
                    log(f"raw LIST {n}: {r['seconds']:.2f}s ({r['pages']} pages, {r['bytes'] / 2**20:.0f} MiB)")
                for tool in (self.order(rep) if sink == "kafka" else tools):
                    rows.append(undisturbed(self.relist_once, tool, n, rep, sink))
                    self.save_partial(f"relist_{sink}", rows, floors)
        return self.summarize_relist(rows, floors, tools)

    def save_partial(self, key, rows, floors=None):
        self.results["scenarios"][key] = {"rows": rows, "raw_list_seconds": floors}
        self.save()

    def summarize_relist(self, rows, floors, tools):
        summary = {}
        for n in self.args.sizes:
            s = {"raw_list_seconds": mmm(floors.get(n, []))}
            for tool in tools:
                mine = [r for r in rows if r["tool"] == tool.name and r["n"] == n]
                s[tool.name] = {
                    "seconds": mmm([r.get("seconds") for r in mine]),
                    "ratio_to_raw_list": mmm([
                        r["seconds"] / floors[n][r["rep"]] for r in mine if r.get("seconds")
                    ]),
                    "cpu_seconds": mmm([r["cpu_seconds_sync"] for r in mine]),
                    "peak_rss": mmm([r["peak_rss"] for r in mine]),
                    "rss_after_sync": mmm([r["rss_after_sync"] for r in mine]),
                    "list_requests": mmm([r.get("list_requests") for r in mine]),
                }
            summary[n] = s
        mem = {}
        for tool in tools:
            base = mmm([r["rss_after_sync"] for r in rows if r["tool"] == tool.name and r["n"] == 0])
            m = {"rss_0": base}
            for n in self.args.sizes:
                rss = mmm([r["rss_after_sync"] for r in rows if r["tool"] == tool.name and r["n"] == n])
                m[f"rss_{n}"] = rss
                if base and rss:
                    m[f"bytes_per_object_{n}"] = (rss["median"] - base["median"]) / n
            mem[tool.name] = m
        return {"rows": rows, "raw_list_seconds": floors, "summary": summary, "memory": mem}

    # -- churn

    def churn_once(self, tool, rate, rep, sink="kafka"):
        trial = f"churn-{tool.name}-{sink}-{rate}-r{rep}"
        if tool.name == "watch":
            cons = FileConsumer(self.run_dir / f"{trial}.events")
            sink_spec = ("none", None)
        elif sink == "kafka":
            topic = self.topic(tool.name, f"churn{rate}")
            cons = Consumer(self.run_dir / f"{trial}.events", topic=topic,
                            fmt="kubewire" if tool.name == "kubewire" else self.args.otel_encoding)
            sink_spec = ("kafka", topic)
        else:
            stream = f"KWBENCH{self.seq}"
            self.seq += 1
            nats_delete_stream(stream)
            cons = Consumer(self.run_dir / f"{trial}.events", subject="kwbench.>")
            sink_spec = ("nats", stream)
        # No initial snapshot in the churn window: the peer without include_initial_state,
        # kubewire with its sync done before the window opens.
        kw = {"initial_state": False} if tool.name == "otelcol" else {}
        proc = tool.start(trial, [NS_CHURN], sink_spec, **kw)
        row = {"tool": tool.name, "sink": sink, "rate": rate, "rep": rep}
        try:
            # Warm-up: wait until the tool delivers a probe write.
            probe_deadline = time.time() + 60
            ok = False
            while time.time() < probe_deadline and proc.alive():
                try:
                    out = loadgen("update", "-ns", NS_CHURN, "-name", "bench-000000")
                except RuntimeError as e:  # the API server restarting (shared testenv)
                    log(f"{trial}: probe write failed ({str(e)[-120:]}); retrying")
                    time.sleep(2)
                    continue
                rv = out.split()[0]
                t_end = time.time() + 3
                while time.time() < t_end:
                    if any(e[1] == rv for e in cons.poll()):
                        ok = True
                        break
                    time.sleep(0.05)
                if ok:
                    break
            if not ok:
                log(f"{trial}: tool never delivered the probe write; see {proc.log_path}")
                return row
            time.sleep(1.0)
            skip = len(cons.poll())
            cpu0, t0 = proc.cpu(), time.time()
            writes = self.run_dir / f"{trial}.writes"
            lg = loadgen("churn", "-ns", NS_CHURN, "-n", self.args.churn_objects, "-rate", rate,
                         "-duration", f"{self.args.duration}s", "-c", 64, "-out", writes)
            # Drain: wait until every write is received or 15 s pass with nothing new.
            acks = {}
            for line in open(writes):
                name, rv, t = line.split()
                acks[(name, rv)] = int(t)
            last_n, quiet = -1, time.time()
            while time.time() - quiet < 15:
                evs = cons.poll()
                got = {(n_, rv_) for n_, rv_, _ in evs[skip:]}
                if acks.keys() <= got:
                    break
                if len(evs) != last_n:
                    last_n, quiet = len(evs), time.time()
                time.sleep(0.2)
            cpu1, t1 = proc.cpu(), time.time()
            evs = cons.poll()[skip:]
            recv = {}
            for name, rv, t in evs:
                recv.setdefault((name, rv), t)
            lat = sorted((recv[k] - acks[k]) / 1e6 for k in acks if k in recv)
            delivered = sum(1 for k in acks if k in recv)
            row.update({
                "loadgen": lg,
                "writes": len(acks),
                "delivered": delivered,
                "events_received": len(evs),
                "lost": len(acks) - delivered,
                "latency_ms": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": lat[-1] if lat else None},
                "cpu_seconds": cpu1 - cpu0,
                "window_seconds": t1 - t0,
                "cpu_seconds_per_10k_events": (cpu1 - cpu0) / delivered * 10_000 if delivered else None,
                "events_per_cpu_second": delivered / (cpu1 - cpu0) if cpu1 > cpu0 else None,
                "peak_rss": proc.hwm,
            })
            (self.run_dir / f"{trial}.latency.json").write_text(json.dumps(lat))
            row["latency_file"] = f"runs/{trial}.latency.json"
            lm = row["latency_ms"]
            log(f"{trial}: {delivered}/{len(acks)} delivered (achieved {lg['achieved_rate']:.0f}/s, missed {lg['missed']}); "
                f"p50 {lm['p50']:.1f} p99 {lm['p99']:.1f} max {lm['max']:.1f} ms; "
                f"{row['cpu_seconds_per_10k_events']:.2f} CPU-s/10k; peak {proc.hwm / 2**20:.1f} MiB")
        finally:
            proc.stop()
            cons.stop()
            if sink == "nats":
                nats_delete_stream(sink_spec[1])
        row["rss_timeline"] = [(round(t, 2), r) for t, r, _ in proc.samples]
        return row

    def scenario_churn(self, sink="kafka"):
        tools = self.tools if sink == "kafka" else [self.tools[0]]
        if sink == "kafka" and self.args.watch_floor:
            tools = tools + [WatchFloor(self.args, self.run_dir)]
        ensure_objects(NS_CHURN, self.args.churn_objects, self.args.object_size)
        rows = []
        for rate in self.args.rates:
            for rep in range(self.args.reps):
                for tool in (tools if rep % 2 == 0 else list(reversed(tools))):
                    rows.append(undisturbed(self.churn_once, tool, rate, rep, sink))
                    self.save_partial(f"churn_{sink}", rows)
        summary = {}
        for rate in self.args.rates:
            s = {}
            for tool in tools:
                mine = [r for r in rows if r["tool"] == tool.name and r["rate"] == rate and "delivered" in r]
                s[tool.name] = {
                    "achieved_rate": mmm([r["loadgen"]["achieved_rate"] for r in mine]),
                    "delivered": mmm([r["delivered"] for r in mine]),
                    "lost": mmm([r["lost"] for r in mine]),
                    **{f"latency_{k}_ms": mmm([r["latency_ms"][k] for r in mine]) for k in ("p50", "p90", "p99", "max")},
                    "cpu_seconds_per_10k_events": mmm([r["cpu_seconds_per_10k_events"] for r in mine]),
                    "events_per_cpu_second": mmm([r["events_per_cpu_second"] for r in mine]),
                    "peak_rss": mmm([r["peak_rss"] for r in mine]),
                }
            if {"kubewire", "otelcol"} <= {t.name for t in tools} and s["kubewire"]["events_per_cpu_second"] and s["otelcol"]["events_per_cpu_second"]:
                # Ratio per repetition (same rep = adjacent in time), then median.
                ratios = []
                for rep in range(self.args.reps):
                    a = [r for r in rows if r["tool"] == "kubewire" and r["rate"] == rate and r["rep"] == rep and r.get("events_per_cpu_second")]
                    b = [r for r in rows if r["tool"] == "otelcol" and r["rate"] == rate and r["rep"] == rep and r.get("events_per_cpu_second")]
                    if a and b:
                        ratios.append({
                            "events_per_cpu_second": a[0]["events_per_cpu_second"] / b[0]["events_per_cpu_second"],
                            "peak_rss": a[0]["peak_rss"] / b[0]["peak_rss"],
                            "p99": a[0]["latency_ms"]["p99"] / b[0]["latency_ms"]["p99"],
                        })
                s["kubewire_vs_otelcol"] = {k: mmm([r[k] for r in ratios]) for k in ("events_per_cpu_second", "peak_rss", "p99")}
            summary[rate] = s
        return {"rows": rows, "summary": summary}

    # -- warm restart

    def restart_once(self, tool, rep):
        n = self.args.restart_objects
        ns = ns_for(n)
        trial = f"restart-{tool.name}-{n}-r{rep}"
        topic = self.topic(tool.name, "restart")
        cons = Consumer(self.run_dir / f"{trial}.events", topic=topic,
                        fmt="kubewire" if tool.name == "kubewire" else self.args.otel_encoding)
        ckpt = self.run_dir / trial / "checkpoint.redb"
        row = {"tool": tool.name, "n": n, "rep": rep}
        proc = tool.start(trial, [ns], ("kafka", topic), checkpoint=ckpt)
        try:
            last, got = self.wait_all(cons, proc, n, timeout=self.args.relist_timeout)
            if last is None:
                log(f"{trial}: initial sync incomplete ({got}/{n})")
                return row
            time.sleep(2.0)  # > commitIntervalMs: the checkpoint holds the sync
            before = len(cons.poll())
            max_rv = max(int(rv) for _, rv, _ in cons.events if rv.isdigit())
            proc.stop(signal.SIGTERM)
            # Changes while down (within the watch window: no compaction in between).
            for i in range(3):
                loadgen("update", "-ns", ns, "-name", f"bench-{i:06d}")
            apis_before = apiserver_list_count()
            t_start = time.time_ns()
            proc = tool.start(trial, [ns], ("kafka", topic), checkpoint=ckpt)
            first = None
            deadline = time.time() + self.args.relist_timeout
            while time.time() < deadline and first is None:
                for name, rv, t in cons.poll()[before:]:
                    if rv.isdigit() and int(rv) > max_rv:
                        first = t
                        break
                time.sleep(0.05)
            time.sleep(3.0)
            evs = cons.poll()[before:]
            row.update({
                "seconds_to_first_new_event": (first - t_start) / 1e9 if first else None,
                "events_after_restart": len(evs),
                "new_changes": sum(1 for _, rv, _ in evs if rv.isdigit() and int(rv) > max_rv),
                "apiserver_list_requests": (lambda a: a - apis_before if a is not None and apis_before is not None else None)(apiserver_list_count()),
            })
            if tool.name == "kubewire":
                row["list_requests"] = tool.list_requests()
            log(f"{trial}: first new event after {row['seconds_to_first_new_event']}s, "
                f"LIST {row.get('list_requests', row['apiserver_list_requests'])}, {len(evs)} events re-sent")
        finally:
            proc.stop()
            cons.stop()
        return row

    def scenario_restart(self):
        ensure_objects(ns_for(self.args.restart_objects), self.args.restart_objects, self.args.object_size)
        rows = []
        for rep in range(self.args.reps):
            for tool in self.order(rep):
                rows.append(undisturbed(self.restart_once, tool, rep))
                self.save_partial("restart", rows)
        summary = {}
        for tool in self.tools:
            mine = [r for r in rows if r["tool"] == tool.name]
            summary[tool.name] = {
                "seconds_to_first_new_event": mmm([r.get("seconds_to_first_new_event") for r in mine]),
                "list_requests": mmm([r.get("list_requests") for r in mine]),
                "apiserver_list_requests": mmm([r.get("apiserver_list_requests") for r in mine]),
                "events_after_restart": mmm([r.get("events_after_restart") for r in mine]),
            }
        return {"rows": rows, "summary": summary}

    # -- pipeline

    def scenario_pipeline(self):
        out = self.out / "pipeline.json"
        env = dict(ENV, KUBEWIRE_BENCH_JSON=str(out))
        if self.args.quick:
            env.update(KUBEWIRE_BENCH_ROUNDS="5", KUBEWIRE_BENCH_ROUND_MS="100")
        cmd = ["cargo", "bench", "--bench", "pipeline"]
        if self.args.quick:
            cmd += ["--", "--min-time", "0.2"]
        log("running", " ".join(cmd))
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        (self.out / "pipeline.txt").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            log("cargo bench failed; see", self.out / "pipeline.txt")
            return {"error": r.stderr[-2000:]}
        print(r.stdout, file=sys.stderr)
        return {"figures": json.loads(out.read_text()), "output": "pipeline.txt"}

    # -- verify: `kubewire verify` of a topic kubewire synced n objects to (issue 17)

    def verify_once(self, n, rep):
        """kubewire syncs namespace kwb-n<n> to a fresh topic and stops; then `kubewire
        verify` reads the topic back and compares it with the cluster's n objects: its wall
        time, CPU and peak RSS, and that it found the stream clean."""
        ns = ns_for(n)
        trial = f"verify-{n}-r{rep}"
        topic = self.topic("kubewire", f"verify{n}")
        cons = Consumer(self.run_dir / f"{trial}.events", topic=topic)
        kw = self.tools[0]
        proc = kw.start(trial, [ns], ("kafka", topic))
        try:
            last, got = self.wait_all(cons, proc, n, timeout=self.args.relist_timeout)
            if last is None:
                raise RuntimeError(f"{trial}: kubewire published {got}/{n} objects")
        finally:
            proc.stop()
            cons.stop()
        cfg = self.run_dir / trial / "kubewire.yaml"
        out = self.run_dir / trial / "verify.json"
        binary = os.environ.get("KWB_KUBEWIRE", str(ROOT / "target" / "release" / "kubewire"))
        cmd = [binary, "verify", "--config", str(cfg), "-o", "json", "--settle", "0",
               "--log-format", "text"]
        t0 = time.time()
        v = Sampled(cmd, out, period=0.05)
        code = v.proc.wait()
        seconds = time.time() - t0
        cpu = v.samples[-1][2] if v.samples else None
        v.stop()
        text = out.read_text()  # the report (stdout), and any log lines (stderr)
        report, _ = json.JSONDecoder().raw_decode(text[text.index('{\n  "source"'):])
        row = {"n": n, "rep": rep, "exit": code, "seconds": round(seconds, 2),
               "cpu_seconds": cpu, "peak_rss": v.hwm,
               "records": report["counts"]["records"],
               "cluster_objects": report["counts"]["clusterObjects"],
               "discrepancies": sum(report["totals"].values())}
        log(f"{trial}: exit {code}, {seconds:.2f}s, peak RSS {v.hwm / 2**20:.1f} MiB, "
            f"{row['records']} records vs {row['cluster_objects']} objects, "
            f"{row['discrepancies']} discrepancies")
        return row

    def scenario_verify(self):
        rows = []
        for n in self.args.sizes:
            ensure_objects(ns_for(n), n, self.args.object_size)
            for rep in range(self.args.reps):
                rows.append(self.verify_once(n, rep))
        return {"rows": rows}

    # -- all

    def run(self):
        sc = self.args.scenarios
        try:
            if "pipeline" in sc:
                self.results["scenarios"]["pipeline"] = self.scenario_pipeline()
                self.save()
            if "relist" in sc or "memory" in sc:
                self.results["scenarios"]["relist_kafka"] = self.scenario_relist("kafka")
                self.save()
            if "churn" in sc:
                self.results["scenarios"]["churn_kafka"] = self.scenario_churn("kafka")
                self.save()
            if "restart" in sc:
                self.results["scenarios"]["restart"] = self.scenario_restart()
                self.save()
            if "nats" in sc or "nats-relist" in sc:
                self.results["scenarios"]["relist_nats"] = self.scenario_relist("nats")
                self.save()
            if "verify" in sc:
                self.results["scenarios"]["verify"] = self.scenario_verify()
                self.save()
            if "nats" in sc or "nats-churn" in sc:
                self.results["scenarios"]["churn_nats"] = self.scenario_churn("nats")
                self.save()
        finally:
            delete_topics(self.topics)
            self.results["finished"] = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            self.save()
            if self.args.cleanup:
                cleanup(self.args.sizes + [self.args.restart_objects])
        log("results:", self.out / "results.json")


def apiserver_list_count():
    """apiserver_request_total{verb="LIST",resource="configmaps"} summed (all clients!)."""
    import ssl
    import urllib.request

    d = Path(ENV["TESTENV_DIR"]) / "certs"
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(str(d / "admin.crt"), str(d / "admin.key"))
    try:
        text = urllib.request.urlopen(ENV["TESTENV_APISERVER_URL"] + "/metrics", context=ctx, timeout=10).read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and 'verb="LIST"' in line and 'resource="configmaps"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def machine():
    def cmd(*c):
        try:
            return subprocess.run(c, capture_output=True, text=True, env=ENV).stdout.strip()
        except OSError:
            return None

    cpu = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = int(line.split()[1]) * 1024
    otel = Otelcol.binary()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "rustc": cmd("rustc", "--version"),
        "go": cmd("go", "version"),
        "kubewire_commit": cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "kubewire_dirty": bool(cmd("git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "Cargo.toml")),
        "otelcol": cmd(str(otel), "--version") if otel else None,
        "kube_apiserver": "v1.35.4 (dev/testenv, --watch-cache=false)",
    }


def cleanup(sizes):
    for ns in [NS_EMPTY, NS_CHURN] + [ns_for(n) for n in sorted(set(sizes))]:
        r = loadgen("delete", "-ns", ns, "-c", 48, check=False)
        log(f"cleanup {ns}: {r}")


def main():
    p = argparse.ArgumentParser(prog="dev/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: small sizes, short windows, 1 repetition")
    p.add_argument("--scenarios", default="pipeline,relist,memory,churn,restart,nats")
    p.add_argument("--sizes", default="20000,100000", help="object counts for relist/memory")
    p.add_argument("--rates", default="200,500,1000", help="writes/s for churn")
    p.add_argument("--duration", type=int, default=60, help="seconds of each churn window")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--churn-objects", type=int, default=1000)
    p.add_argument("--restart-objects", type=int, default=20000)
    p.add_argument("--object-size", type=int, default=1024, help="bytes of data per ConfigMap")
    p.add_argument("--relist-timeout", type=int, default=900)
    p.add_argument("--settle", type=float, default=5.0, help="seconds after a sync before reading RSS")
    p.add_argument("--no-peer", dest="peer", action="store_false")
    p.add_argument("--no-watch-floor", dest="watch_floor", action="store_false",
                   help="churn without the bare-watch latency floor row")
    p.add_argument("--otel-encoding", default="otlp_proto", choices=["otlp_proto", "otlp_json"])
    p.add_argument("--out", help="results directory (default target/bench/<time>)")
    p.add_argument("--cleanup", action="store_true", help="delete every benchmark ConfigMap at the end")
    p.add_argument("--cleanup-only", action="store_true", help="only delete the benchmark ConfigMaps")
    args = p.parse_args()
    if args.cleanup_only:
        cleanup([int(x) for x in str(args.sizes).split(",") if x] + [args.restart_objects, 1000, 2000])
        return
    if args.quick:
        for k, v in dict(sizes="1000,2000", rates="50,100", duration=5, reps=1, churn_objects=100,
                         restart_objects=1000, settle=1.0).items():
            if f"--{k.replace('_', '-')}" not in sys.argv:
                setattr(args, k, v)
    args.sizes = [int(x) for x in str(args.sizes).split(",") if x]
    args.rates = [int(x) for x in str(args.rates).split(",") if x]
    args.scenarios = set(args.scenarios.split(","))

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        Bench(args).run()
    finally:
        stop_children()


if __name__ == "__main__":
    main()
