"""dev/faults: kubewire's fault suite (docs/reliability.md). Run through dev/faults, which sets up
the environment and the checker's virtualenv.

Each scenario: fresh namespaces, a fresh NATS stream / Kafka topic / output file; kubewire
started on them; the churn workload (dev/checker/churn.py) running; one fault applied while
it runs; then the churn stops, the stream quiesces, and the independent checker
(dev/checker/checker.py verify) compares what reached the sink with the cluster and prints
the scenario's verdict line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CHECKER = os.path.join(REPO, "dev", "checker")
sys.path.insert(0, CHECKER)

from kube import ApiError, Kube, resource_path  # noqa: E402
import churn as churn_mod  # noqa: E402

PY = sys.executable
RES_PATHS = {"configmaps": ("", "v1", "configmaps"),
             "churns": (churn_mod.CRD_GROUP, "v1", churn_mod.CRD_PLURAL)}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def testenv(*args, check=True):
    r = subprocess.run([os.path.join(REPO, "dev", "testenv"), *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"dev/testenv {' '.join(args)} failed: {r.stdout}{r.stderr}")
    return r.stdout


class Downstream:
    """Incrementally reads the file sink output or a capture, remembering the versions of
    probe objects (names starting with `probe`) seen, and per stream (resource, namespace)
    the highest resourceVersion seen, with when (`history`, for `seen_by`)."""

    def __init__(self, path, capture):
        self.path, self.capture, self.off = path, capture, 0
        self.seen: set[tuple] = set()
        self.lines = 0
        self.stream_rv: dict[tuple, int] = {}
        self.history: list[tuple[float, dict]] = []  # (time.time() of a poll, stream_rv then)

    def seen_by(self, t):
        """stream -> the highest resourceVersion downstream at wall time `t` (as of the last
        poll before it: a poll sees an event at or after it reached the sink)."""
        snap = {}
        for when, rvs in self.history:
            if when > t:
                break
            snap = rvs
        return snap

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.off += end + 1
        changed = False
        for line in data[: end + 1].splitlines():
            self.lines += 1
            try:
                rec = json.loads(line)
                e = json.loads(rec["value"]) if self.capture else rec
            except (ValueError, KeyError, TypeError):
                continue
            if not isinstance(e, dict):
                continue
            if str(e.get("type", "")).startswith("io.kubewire.object."):
                k = (e.get("k8sresource"), e.get("k8snamespace"))
                try:
                    rv = int(e.get("k8sresourceversion"))
                except (TypeError, ValueError):
                    rv = None
                if rv is not None and rv > self.stream_rv.get(k, 0):
                    self.stream_rv[k] = rv
                    changed = True
            if str(e.get("k8sname", "")).startswith("probe"):
                self.seen.add((e.get("k8sresource"), e.get("k8snamespace"), e["k8sname"],
                               e.get("k8sresourceversion")))
        if changed:
            self.history.append((time.time(), dict(self.stream_rv)))

    def wait(self, wanted: set[tuple], timeout: float) -> float | None:
        """Seconds until every (resource, ns, name, rv) in `wanted` is downstream; None on
        timeout."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            self.poll()
            if wanted <= self.seen:
                return time.monotonic() - start
            time.sleep(0.05)
        return None

    def wait_quiet(self, quiet: float, timeout: float):
        """Returns once the output has not grown for `quiet` s; raises if it still grows
        after `timeout` s (the verdict would be taken on a moving stream)."""
        start, last, last_change = time.monotonic(), -1, time.monotonic()
        first = None
        while time.monotonic() - start < timeout:
            size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            first = size if first is None else first
            if size != last:
                last, last_change = size, time.monotonic()
            elif time.monotonic() - last_change >= quiet:
                return
            time.sleep(0.2)
        raise RuntimeError(
            f"{self.path} did not go quiet: waited {timeout} s for {quiet} s without growth, "
            f"it grew from {first} to {last} bytes, the last time "
            f"{time.monotonic() - last_change:.1f} s ago")


class Kubewire:
    """The kubewire process under test; samples its peak RSS (VmHWM)."""

    def __init__(self, binary, config, workdir):
        self.binary, self.config, self.dir = binary, config, workdir
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        # kills that found kubewire running and ended it (exit by SIGKILL), counted from the
        # exit statuses rather than from the scenario's plan
        self.kills = 0
        self.max_rss_kb = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def log_path(self, run):
        return os.path.join(self.dir, f"kubewire-{run}.log")

    def start(self):
        self.runs += 1
        self.proc = subprocess.Popen(
            [self.binary, "run", "--config", self.config],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path(self.runs), "w"),
            env={k: v for k, v in os.environ.items() if k != "RUST_LOG"},
        )

    def _hwm(self):
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.max_rss_kb = max(self.max_rss_kb, int(line.split()[1]))
        except OSError:
            pass

    def _sample(self):
        while not self._stop.is_set():
            self._hwm()
            time.sleep(0.2)

    def kill9(self):
        self._hwm()
        running = self.proc.poll() is None
        self.proc.send_signal(signal.SIGKILL)
        if self.proc.wait() == -signal.SIGKILL and running:
            self.kills += 1

    def resumed_from(self, run):
        """stream -> the resourceVersion run `run` resumed it from (its "resuming from
        checkpoint" log records; kubewire logs the stored version as `Some("<rv>")`)."""
        out = {}
        for rec in self.logs(run):
            if msg_of(rec) != "resuming from checkpoint":
                continue
            fields = {**rec.get("fields", {}), **rec}
            m = re.search(r"\d+", str(fields.get("resource_version")))
            if m and fields.get("stream"):
                out[fields["stream"]] = int(m.group())
        return out

    def restarts_that(self, message):
        """How many runs after the first logged `message` at least once."""
        return sum(1 for r in range(2, self.runs + 1)
                   if any(msg_of(rec) == message for rec in self.logs(r)))

    def stop(self, timeout=40):
        self._hwm()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "timeout"
        finally:
            self._stop.set()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def logs(self, run=None):
        out = []
        for r in [run] if run else range(1, self.runs + 1):
            try:
                with open(self.log_path(r)) as f:
                    for line in f:
                        try:
                            out.append(json.loads(line))
                        except ValueError:
                            out.append({"message": line.strip()})
            except FileNotFoundError:
                pass
        return out

    def admin_address(self):
        """host:port of the current run's admin server (from its log), or None."""
        return next((r.get("address") or r.get("fields", {}).get("address")
                     for r in self.logs(self.runs) if "admin server listening" in msg_of(r)), None)

    def readyz(self):
        """(status, body) of the current run's /readyz (its address is in its log)."""
        import urllib.error
        import urllib.request
        addr = self.admin_address()
        if not addr:
            return None, "no admin address logged"
        try:
            with urllib.request.urlopen(f"http://{addr}/readyz", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name):
        """The summed value of metric `name` (all label sets) from /metrics, or None."""
        import urllib.request
        addr = self.admin_address()
        if not addr:
            return None
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(name + "{") or line.startswith(name + " ")]
        return sum(values) if values else None

    def first_log(self, needle):
        """The first record whose message or fields contain `needle`, or None."""
        return next((r for r in self.logs() if needle in json.dumps(r, ensure_ascii=False)),
                    None)

    def count_log(self, needle):
        return sum(1 for r in self.logs() if needle in str(r.get("message", "")) or
                   needle in str(r.get("fields", {}).get("message", "")))


def msg_of(rec):
    return str(rec.get("message") or rec.get("fields", {}).get("message", ""))


class Run:
    """One scenario's world: namespaces, sink, kubewire, collector, churn."""

    def __init__(self, name, sink, opts):
        self.name, self.sink, self.opts = name, sink, opts
        self.id = f"{name}-{uuid.uuid4().hex[:6]}"
        short = uuid.uuid4().hex[:6]
        self.dir = os.path.join(opts.workdir, self.id)
        os.makedirs(self.dir)
        self.namespaces = [f"kwf-{short}-{i}" for i in range(opts.namespaces)]
        self.kube = Kube()
        self.figures: dict[str, object] = {}
        self.problems: list[str] = []
        self.stream = f"KWF_{short.upper()}"
        self.subject_prefix = f"kwf.{short}"
        self.topic = f"kwf.{short}"
        self.capture = os.path.join(self.dir, "capture.jsonl")
        self.output = self.capture if sink in ("nats", "kafka") else os.path.join(self.dir, "events.jsonl")
        self.downstream = Downstream(self.output, capture=sink in ("nats", "kafka"))
        self.stop_file = os.path.join(self.dir, "STOP")
        self.pause_file = os.path.join(self.dir, "PAUSE")
        self.journal = os.path.join(self.dir, "churn.jsonl")
        self.collector = self.churn = self.kw = None
        self.probe_n = 0
        self.scram_user = None  # kafka-credentials-revoked: kubewire's own SCRAM user

    # -- set-up
    def config(self, extra_sink=None):
        nss = "[" + ", ".join(self.namespaces) + "]"
        if self.sink == "nats":
            sink = (f"sink:\n  type: nats\n  url: {os.environ['NATS_URL']}\n"
                    f"  subject: \"{self.subject_prefix}.{{cluster}}.{{group}}.{{kind}}.{{namespace}}.{{name}}\"\n"
                    f"  ackTimeoutMs: 2000\n"
                    f"  stream: {{name: {self.stream}, create: true, subjects: [\"{self.subject_prefix}.>\"], "
                    f"duplicateWindowSeconds: 600}}\n")
        elif self.sink == "kafka" and self.scram_user:
            sink = (f"sink:\n  type: kafka\n  brokers: {os.environ['KAFKA_SASL_BROKERS']}\n"
                    f"  topic: {self.topic}\n  securityProtocol: sasl_plaintext\n"
                    f"  sasl: {{mechanism: SCRAM-SHA-256, username: {self.scram_user}, "
                    f"passwordFile: {self.scram_password_file}}}\n")
        elif self.sink == "kafka":
            sink = (f"sink:\n  type: kafka\n  brokers: {os.environ['KAFKA_BROKERS']}\n"
                    f"  topic: {self.topic}\n")
        else:
            sink = f"sink:\n  type: file\n  path: {self.output}\n"
        o = self.opts
        return (
            "resources:\n"
            f"  - resource: configmaps\n    namespaces: {nss}\n"
            f"  - resource: {churn_mod.CRD_NAME}\n    namespaces: {nss}\n"
            f"{sink}"
            f"checkpoint:\n  path: {self.dir}/checkpoint.redb\n  commitIntervalMs: 200\n"
            f"watch:\n  timeoutSeconds: {o.watch_timeout}\n  idleTimeoutSeconds: {o.idle_timeout}\n"
            f"  backoffInitialMs: 200\n  backoffMaxMs: 3000\n"
            "log:\n  format: json\n  level: info\n"
            "admin:\n  address: 127.0.0.1:0\n"
        )

    def setup(self):
        churn_mod.ensure_crd(self.kube)
        for ns in self.namespaces:
            churn_mod.ensure_namespace(self.kube, ns)
        if self.sink == "kafka":
            kafka_create_topic(self.topic)
        cfg = os.path.join(self.dir, "config.yaml")
        with open(cfg, "w") as f:
            f.write(self.config())
        self.kw = Kubewire(self.opts.kubewire, cfg, self.dir)
        self.kw.start()
        if self.sink in ("nats", "kafka"):
            self.start_collector()
        # every stream is listed and watching before the churn starts: one object each
        wanted = set()
        for ns in self.namespaces:
            for res in RES_PATHS:
                wanted.add(self.write_probe(res, ns, "probe-ready"))
        t = self.downstream.wait(wanted, 90)
        if t is None:
            raise RuntimeError(f"{self.id}: kubewire did not publish the readiness probes "
                               f"(logs in {self.dir})")

    def start_collector(self):
        args = ["collect", self.sink, "--out", self.capture, "--stop-file", self.stop_file + ".collector"]
        args += ["--stream", self.stream] if self.sink == "nats" else ["--topic", self.topic]
        self.collector = subprocess.Popen([PY, os.path.join(CHECKER, "checker.py"), *args],
                                          stderr=open(os.path.join(self.dir, "collector.log"), "w"))

    def start_churn(self):
        self.churn = subprocess.Popen(
            [PY, os.path.join(CHECKER, "churn.py"), "--namespaces", ",".join(self.namespaces),
             "--rate", str(self.opts.rate), "--journal", self.journal, "--stop-file", self.stop_file,
             "--pause-file", self.pause_file, "--seed", str(random.randrange(1 << 30))],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.dir, "churn.log"), "w"), text=True)

    def write_probe(self, res, ns, name):
        """Creates or updates probe object `name`; returns (resource, ns, name, rv)."""
        self.probe_n += 1
        g, v, p = RES_PATHS[res]
        if res == "configmaps":
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                    "data": {"n": str(self.probe_n)}}
        else:
            body = {"apiVersion": f"{g}/v1", "kind": churn_mod.CRD_KIND, "metadata": {"name": name},
                    "spec": {"n": self.probe_n}}
        try:
            obj = self.kube.retrying("POST", resource_path(g, v, p, ns), body, deadline_s=180)
        except ApiError as e:
            if e.status != 409:
                raise
            patch = {"data": {"n": str(self.probe_n)}} if res == "configmaps" else {"spec": {"n": self.probe_n}}
            obj = self.kube.retrying("PATCH", resource_path(g, v, p, ns, name), patch, deadline_s=180,
                                     content_type="application/merge-patch+json")
        return (res, ns, name, obj["metadata"]["resourceVersion"])

    def recovery(self, label="recover_s", timeout=180):
        """Time from now until a fresh write reaches the sink."""
        start = time.monotonic()
        probe = self.write_probe("configmaps", self.namespaces[0], "probe")
        t = self.downstream.wait({probe}, timeout)
        if t is None:
            self.problems.append(f"{label}: a write made after the fault did not reach the sink "
                                 f"within {timeout} s")
            self.figures[label] = "none"
            return None
        total = round(time.monotonic() - start, 2)
        self.figures[label] = total
        return total

    # -- tear-down and verdict
    def finish(self):
        open(self.stop_file, "w").close()
        out, _ = self.churn.communicate(timeout=300)
        churn_line = out.strip().splitlines()[-1] if out.strip() else "churn: ?"
        log(f"{self.id}: {churn_line}")
        if self.churn.returncode != 0:
            self.problems.append(f"churn failed: see {self.dir}/churn.log")
        # quiesce: one final write per stream, all visible downstream, then no growth
        wanted = {self.write_probe(res, ns, "probe-final") for ns in self.namespaces for res in RES_PATHS}
        if self.downstream.wait(wanted, 240) is None:
            self.problems.append("final probes did not all reach the sink within 240 s")
        self.downstream.wait_quiet(2.0, 60)
        code = self.kw.stop()
        if code != 0:
            self.problems.append(f"kubewire exited with {code} on SIGTERM")
        if self.collector:
            open(self.stop_file + ".collector", "w").close()
            try:
                self.collector.wait(60)
            except subprocess.TimeoutExpired:
                self.collector.kill()
                self.problems.append("collector did not stop")
        self.figures["max_rss_mib"] = round(self.kw.max_rss_kb / 1024, 1)
        self.figures["kubewire_runs"] = self.kw.runs
        errors = [r for r in self.kw.logs() if r.get("level") == "ERROR"]
        self.figures["error_logs"] = len(errors)
        self.figures["kubewire_verify"] = self.kubewire_verify()
        args = [PY, os.path.join(CHECKER, "checker.py"), "verify",
                "--file" if self.sink == "file" else "--capture", self.output,
                "--namespaces", ",".join(self.namespaces), "--journal", self.journal,
                "--scenario", f"{self.name}[{self.sink}]",
                "--verdict-file", os.path.join(self.opts.workdir, "verdicts.txt")]
        for k, v in self.figures.items():
            args += ["--figure", f"{k}={v}"]
        for p in self.problems:
            args += ["--problem", p]
        r = subprocess.run(args, capture_output=True, text=True)
        sys.stderr.write(r.stderr)
        verdict = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else f"VERDICT {self.name}: FAIL (checker crashed)"
        ok = r.returncode == 0 and not self.problems
        if ok and not self.opts.keep:
            self.cleanup()
        return ok, verdict

    def kubewire_verify(self):
        """`kubewire verify` on the destination itself, with the scenario's configuration,
        next to the independent checker: `pass` (exit 0), `fail:<totals>` (a problem of the
        scenario), or `skipped` where the destination was deleted during the fault (the
        topic or stream then no longer holds what was published before, while the checker
        judges its capture of every incarnation)."""
        if self.name in SKIP_KUBEWIRE_VERIFY:
            return "skipped"
        r = subprocess.run(
            [self.opts.kubewire, "verify", "--config", os.path.join(self.dir, "config.yaml"),
             "-o", "json", "--settle", "0"],
            capture_output=True, text=True,
            env={k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "KUBEWIRE_CONFIG")})
        with open(os.path.join(self.dir, "kubewire-verify.json"), "w") as f:
            f.write(r.stdout + r.stderr)
        try:
            totals = json.loads(r.stdout)["totals"]
        except (ValueError, KeyError):
            self.problems.append(f"kubewire verify failed (exit {r.returncode}): {r.stderr.strip()[:300]}")
            return "error"
        if r.returncode == 0:
            return "pass"
        self.problems.append(f"kubewire verify disagrees (exit {r.returncode}): {totals} "
                             f"(see {self.dir}/kubewire-verify.json)")
        return "fail:" + ",".join(f"{k}={v}" for k, v in sorted(totals.items()) if v)

    def cleanup(self):
        for ns in self.namespaces:
            for res, (g, v, p) in RES_PATHS.items():
                try:
                    self.kube.retrying("DELETE", resource_path(g, v, p, ns), deadline_s=30)
                except Exception:  # noqa: BLE001 - best effort
                    pass
            try:
                self.kube.retrying("DELETE", f"/api/v1/namespaces/{ns}", deadline_s=30)
            except Exception:  # noqa: BLE001
                pass
        if self.sink == "nats":
            asyncio.run(nats_stream_op("delete", self.stream))
        elif self.sink == "kafka":
            kafka_delete_topic(self.topic)
        if self.scram_user:
            try:
                kafka_scram(self.scram_user)
            except Exception:  # noqa: BLE001 - best effort
                pass

    def abort(self):
        for p in (self.churn, self.collector):
            if p and p.poll() is None:
                p.kill()
        if self.kw and self.kw.alive():
            self.kw.proc.kill()


# ---------------------------------------------------------------- sink admin


def kafka_admin():
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": os.environ["KAFKA_BROKERS"], "log_level": 0})


def kafka_create_topic(topic, partitions=3):
    from confluent_kafka.admin import NewTopic
    admin = kafka_admin()  # keep the handle alive until the future resolves
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def kafka_delete_topic(topic):
    try:
        admin = kafka_admin()
        admin.delete_topics([topic])[topic].result(30)
    except Exception as e:  # noqa: BLE001
        return e


def kafka_await_gone(topic, timeout=30):
    admin = kafka_admin()
    end = time.monotonic() + timeout
    while topic in admin.list_topics(timeout=10).topics:
        if time.monotonic() > end:
            raise RuntimeError(f"topic {topic} still listed {timeout} s after its deletion")
        time.sleep(0.2)


def kafka_scram(user, password=None):
    """Creates (with `password`) or deletes (without) `user`'s SCRAM-SHA-256 credential on the
    dev/testenv broker, through the admin API on its unauthenticated listener."""
    from confluent_kafka.admin import (ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialDeletion, UserScramCredentialUpsertion)
    admin = kafka_admin()
    if password is None:
        change = UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_256)
    else:
        change = UserScramCredentialUpsertion(
            user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), password.encode())
    for f in admin.alter_user_scram_credentials([change]).values():
        f.result(30)


def kafka_high_watermarks(topic):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": os.environ["KAFKA_BROKERS"], "group.id": "kwf-hw", "log_level": 0})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions)
    finally:
        c.close()


async def nats_stream_op(op, stream, config=None):
    import nats
    nc = await nats.connect(os.environ["NATS_URL"])
    try:
        jsm = nc.jsm()
        if op == "delete":
            try:
                await jsm.delete_stream(stream)
            except Exception:  # noqa: BLE001
                pass
        elif op == "info":
            return await jsm.stream_info(stream)
        elif op == "add":
            return await jsm.add_stream(config)
    finally:
        await nc.close()


def capture_count(path):
    with open(path, "rb") as f:
        return sum(1 for line in f if b'"value"' in line)


# ---------------------------------------------------------------- faults


# How long after an event reached the sink a kill -9 may still replay it: the commit
# interval of the scenarios' config (200 ms) plus the commit itself and the sink's ack,
# with slack for a loaded CI machine (tests/harness REPLAY_WINDOW reasons the same way).
REPLAY_WINDOW_S = 1.0


def fault_kill9(run: Run, o):
    rounds = o.kill_rounds
    kills = []  # (the run killed, wall time of the kill)
    for i in range(rounds):
        # a random moment, not a sync point; the sink is sampled meanwhile (replay_bound)
        until = time.monotonic() + random.uniform(o.kill_min, o.kill_max)
        while time.monotonic() < until:
            run.downstream.poll()
            time.sleep(min(0.05, max(0.0, until - time.monotonic())))
        run.downstream.poll()
        kills.append((run.kw.runs, time.time()))
        run.kw.kill9()
        run.kw.start()
    # what happened, not what was planned: kills that ended a running kubewire; restarts
    # that resumed from the checkpoint (a run killed during its start-up may not have got
    # that far, the last one must); restarts that listed instead (no compaction here, so
    # every restart is inside the watch window and must resume, not relist)
    run.figures["kills"] = run.kw.kills
    run.recovery()
    run.figures["resumed_restarts"] = run.kw.restarts_that("resuming from checkpoint")
    run.figures["relisted_restarts"] = run.kw.restarts_that("listing")
    if run.kw.kills != rounds:
        run.problems.append(f"{rounds} kills planned, {run.kw.kills} ended a running kubewire")
    if not any(msg_of(r) == "resuming from checkpoint" for r in run.kw.logs(run.kw.runs)):
        run.problems.append("the last restart did not resume from the checkpoint")
    checkpoint_advanced(run)
    replay_bound(run, kills)


def _log_time(rec):
    from datetime import datetime
    ts = rec.get("timestamp")
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() if ts else None


def replay_bound(run: Run, kills):
    """The replay after each kill is bounded: the checkpoint the next run resumed from
    covers every event of its stream that was downstream more than REPLAY_WINDOW_S before
    the kill. That holds for a killed run that had been running (resumed, or listed) for at
    least the window: whatever it replayed or published was acknowledged and committed by
    then. Kills of younger runs are not checked (`replay_checked` counts those that were)."""
    checked = 0
    for r, t_kill in kills:
        started = [_log_time(x) for x in run.kw.logs(r)
                   if msg_of(x) in ("resuming from checkpoint", "initial list done")]
        started = [t for t in started if t is not None]
        if not started or t_kill - max(started) < REPLAY_WINDOW_S:
            continue
        resumed = {}
        for stream, rv in run.kw.resumed_from(r + 1).items():
            # "<cluster>/<resource>[.<group>] in <namespace>"
            m = re.match(r"[^/]+/([^. ]+)\S* in (\S+)$", stream)
            if m:
                resumed[(m.group(1), m.group(2))] = (stream, rv)
        before = run.downstream.seen_by(t_kill - REPLAY_WINDOW_S)
        for k, rv in before.items():
            if k not in resumed:
                continue
            stream, cp = resumed[k]
            checked += 1
            if cp < rv:
                run.problems.append(
                    f"kill of run {r}: run {r + 1} resumed {stream} from rv {cp}, but rv {rv} "
                    f"was downstream more than {REPLAY_WINDOW_S} s before the kill: the "
                    "checkpoint did not advance behind the acknowledgements")
    run.figures["replay_checked"] = checked


def checkpoint_advanced(run: Run):
    """The checkpoint moves: between the first restart that resumed every stream and the
    last restart, each stream's resume point advanced (the churn writes to every stream
    for seconds in between, with commits every 200 ms). A checkpoint that stopped advancing
    after some commit replays ever more after each kill, and the verdict's `duplicates`
    alone would not show it. Figure `checkpoints_advanced`: streams whose resume point moved."""
    streams = len(run.namespaces) * len(RES_PATHS)
    runs = [run.kw.resumed_from(r) for r in range(2, run.kw.runs + 1)]
    complete = [m for m in runs if len(m) == streams]
    if len(complete) < 2:
        run.problems.append(f"fewer than two restarts resumed all {streams} streams: "
                            f"{[len(m) for m in runs]}")
        run.figures["checkpoints_advanced"] = 0
        return
    first, last = complete[0], complete[-1]
    stuck = sorted(s for s in first if last.get(s, 0) <= first[s])
    run.figures["checkpoints_advanced"] = streams - len(stuck)
    for s in stuck:
        run.problems.append(f"stream {s}: resumed from rv {first[s]} and, restarts later, "
                            f"from rv {last.get(s)}: its checkpoint did not advance")


def fault_kafka_outage(run: Run, o):
    testenv("stop", "kafka")
    t0 = time.monotonic()
    time.sleep(o.kafka_outage)  # the outage itself
    testenv("start", "kafka")
    run.figures["outage_s"] = round(time.monotonic() - t0, 1)
    run.recovery()


def fault_restart(service):
    def fault(run: Run, o):
        t0 = time.monotonic()
        testenv("restart", service)
        run.figures["restart_s"] = round(time.monotonic() - t0, 1)
        run.recovery()
    return fault


def fault_compaction(run: Run, o):
    """`dev/testenv compact` every few seconds while the churn runs, so that every watch
    that resumes from an older version gets 410 Gone. Live watches with traffic rarely
    resume from before the last compaction, so in some rounds kubewire is also killed,
    etcd compacted while it is down (the writes it missed are gone from history), and
    kubewire restarted: each of its streams then resumes from a compacted version and must
    relist and reconcile (adds, updates, and deletes it never saw)."""
    stop = threading.Event()
    count = [0]

    def loop():
        while not stop.is_set():
            testenv("compact")
            count[0] += 1
            stop.wait(o.compaction_every)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    end = time.monotonic() + o.compaction_for
    kills = 0
    try:
        while time.monotonic() < end:
            time.sleep(random.uniform(1.0, 3.0))  # a random moment
            run.kw.kill9()
            kills += 1
            time.sleep(random.uniform(0.5, 2.0))  # churn goes on while kubewire is down
            testenv("compact")
            count[0] += 1
            run.kw.start()
    finally:
        stop.set()
        t.join()
    run.figures["compactions"] = count[0]
    run.figures["kills"] = run.kw.kills
    if run.kw.kills != kills:
        run.problems.append(f"{kills} kills made, {run.kw.kills} ended a running kubewire")
    run.recovery()
    run.figures["gone_410"] = run.kw.count_log("410 Gone")
    if run.figures["gone_410"] == 0:
        run.problems.append("no watch hit 410 Gone: the compaction did not bite")


def fault_stall(run: Run, o):
    pid = int(open(os.path.join(os.environ["TESTENV_DIR"], "pids", "apiserver.pid")).read().strip())
    before = run.kw.count_log("watch silent past its idle timeout")
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(o.stall)  # the stall itself: longer than watch.idleTimeoutSeconds
    finally:
        os.kill(pid, signal.SIGCONT)
    run.figures["stall_s"] = o.stall
    run.recovery()
    run.figures["idle_restarts"] = run.kw.count_log("watch silent past its idle timeout") - before
    if run.figures["idle_restarts"] == 0:
        run.problems.append("no watch was restarted for silence during the stall")


def sync_before_delete(run: Run, upstream_count, timeout=60):
    """Pauses the churn and waits until the collector holds everything the stream/topic has,
    so that deleting it loses nothing the checker could have seen (the fault is kubewire's
    view of a missing destination, not the test throwing away stored events)."""
    open(run.pause_file, "w").close()
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        n = upstream_count()
        if n == last and capture_count(run.capture) >= n:
            return
        last = n
        time.sleep(0.5)
    raise RuntimeError("collector did not catch up before the deletion")


def fault_nats_stream_deleted(run: Run, o):
    info = asyncio.run(nats_stream_op("info", run.stream))
    config = info.config
    sync_before_delete(run, lambda: asyncio.run(nats_stream_op("info", run.stream)).state.messages)
    asyncio.run(nats_stream_op("delete", run.stream))
    os.unlink(run.pause_file)
    t0 = time.monotonic()
    # while the stream is gone, kubewire must say so (not drop events silently)
    while time.monotonic() - t0 < o.revoked_for or run.kw.count_log("NATS publishes failing") == 0:
        if time.monotonic() - t0 > o.revoked_for + 60:
            run.problems.append("no 'NATS publishes failing' error while the stream was gone")
            break
        time.sleep(0.5)
    run.figures["error_logged"] = run.kw.count_log("NATS publishes failing") > 0
    asyncio.run(nats_stream_op("add", run.stream, config))
    run.figures["deleted_s"] = round(time.monotonic() - t0, 1)
    run.recovery()
    record_retries(run)


def fault_kafka_topic_deleted(run: Run, o):
    sync_before_delete(run, lambda: kafka_high_watermarks(run.topic))
    kafka_delete_topic(run.topic)
    # Until the deletion is in the cluster's metadata, the broker still accepts (and acks)
    # produce requests for the old topic, then deletes them with it: the operator's loss, not
    # kubewire's. So the churn resumes only once the topic is gone (seen once in CI: lost=1).
    kafka_await_gone(run.topic)
    os.unlink(run.pause_file)
    t0 = time.monotonic()
    # kubewire must say so, naming the topic, and turn unready: a clear error, not silence
    said = await_error(run, o.revoked_for, t0, f"kafka topic {run.topic} does not exist", run.topic)
    run.figures["error_logged"] = said
    while time.monotonic() - t0 < o.revoked_for:
        time.sleep(0.5)
    # recreate: a broker may need a moment to finish the deletion
    end = time.monotonic() + 60
    while True:
        try:
            kafka_create_topic(run.topic)
            break
        except Exception:  # noqa: BLE001 - "marked for deletion": retry
            if time.monotonic() > end:
                raise
            time.sleep(1)
    run.figures["deleted_s"] = round(time.monotonic() - t0, 1)
    run.recovery()
    record_retries(run)


def await_error(run: Run, limit, t0, needle, culprit):
    """Waits (bounded) for kubewire's error containing `needle`; then /readyz must be 503 and
    name `culprit`. Records `error_after_s` and `readyz`; a miss is a problem. Returns whether
    the error was logged."""
    while run.kw.first_log(needle) is None:
        if time.monotonic() - t0 > limit:
            run.problems.append(f"kubewire logged no error containing {needle!r} within {limit} s")
            run.figures["error_after_s"] = "none"
            return False
        time.sleep(0.5)
    run.figures["error_after_s"] = round(time.monotonic() - t0, 1)
    status, body = run.kw.readyz()
    run.figures["readyz"] = status
    if status != 503 or culprit not in body:
        run.problems.append(f"/readyz during the fault: {status} {body[:200]!r}, "
                            f"expected 503 naming {culprit}")
    return True


def record_retries(run: Run):
    """`sink_retries`: kubewire's own count of deliveries it tried again (its metric is
    refreshed every second, so a zero is looked at again for a few seconds)."""
    end = time.monotonic() + 5
    while True:
        n = run.kw.metric("kubewire_sink_retries_total")
        if (n or 0) > 0 or time.monotonic() > end:
            break
        time.sleep(0.5)
    run.figures["sink_retries"] = int(n) if n is not None else "none"


def prepare_scram(run: Run, o):
    """Before kubewire starts: its own SCRAM user, so the fault can revoke it."""
    run.scram_user = f"kubewire-{run.id}"
    run.scram_password = uuid.uuid4().hex
    run.scram_password_file = os.path.join(run.dir, "kafka-password")
    with open(run.scram_password_file, "w") as f:
        f.write(run.scram_password)
    kafka_scram(run.scram_user, run.scram_password)


def fault_kafka_credentials_revoked(run: Run, o):
    """kubewire's SCRAM credential deleted mid-run (the broker re-authenticates sessions every
    5 s, so the live connection is refused within seconds), then created again."""
    t0 = time.monotonic()
    kafka_scram(run.scram_user)
    run.figures["error_logged"] = await_error(run, o.credentials_for, t0,
                                              "kafka authentication failed", "authentication")
    while time.monotonic() - t0 < o.credentials_for:
        time.sleep(0.5)
    kafka_scram(run.scram_user, run.scram_password)
    run.figures["revoked_s"] = round(time.monotonic() - t0, 1)
    run.recovery()
    # and ready again once deliveries flow
    end = time.monotonic() + 30
    while (status := run.kw.readyz()[0]) != 200 and time.monotonic() < end:
        time.sleep(0.5)
    if status != 200:
        run.problems.append(f"/readyz still {status} 30 s after the credential was restored")


SCENARIOS = {
    # name: (sink, fault)
    "kill9": ("nats", fault_kill9),
    "kill9-kafka": ("kafka", fault_kill9),
    "kill9-file": ("file", fault_kill9),
    "kafka-outage": ("kafka", fault_kafka_outage),
    "nats-restart": ("nats", fault_restart("nats")),
    "apiserver-restart": ("nats", fault_restart("apiserver")),
    "compaction": ("file", fault_compaction),
    "stalled-watch": ("file", fault_stall),
    "nats-stream-deleted": ("nats", fault_nats_stream_deleted),
    "kafka-topic-deleted": ("kafka", fault_kafka_topic_deleted),
    "kafka-credentials-revoked": ("kafka", fault_kafka_credentials_revoked),
}

# Scenarios whose destination is deleted during the fault: `kubewire verify` reads the
# destination, which then no longer holds what was published before the deletion.
SKIP_KUBEWIRE_VERIFY = {"nats-stream-deleted", "kafka-topic-deleted"}

# Set-up a scenario needs before kubewire starts.
PREPARE = {"kafka-credentials-revoked": prepare_scram}


def run_scenario(name, o):
    sink, fault = SCENARIOS[name]
    run = Run(name, o.sink or sink, o)
    log(f"{run.id}: sink {run.sink}, namespaces {','.join(run.namespaces)}, dir {run.dir}")
    try:
        if name in PREPARE and run.sink == "kafka":
            PREPARE[name](run, o)
        run.setup()
        run.start_churn()
        time.sleep(o.warmup)  # let the churn run before the fault (workload pacing)
        fault(run, o)
        time.sleep(o.after)  # and after it
        if not run.kw.alive():
            run.problems.append(f"kubewire died (exit {run.kw.proc.returncode})")
            run.kw.start()
        ok, verdict = run.finish()
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        run.abort()
        ok, verdict = False, f"VERDICT {name}[{run.sink}]: FAIL error={e!r}"
    for p in run.problems:
        log(f"{run.id}: problem: {p}")
    print(verdict, flush=True)
    return ok, verdict


def main(argv=None):
    ap = argparse.ArgumentParser(prog="dev/faults", description="kubewire's fault suite")
    ap.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    ap.add_argument("--ci", action="store_true", help="the shortened form (tests/faults.rs)")
    ap.add_argument("--kubewire", required=True, help="the kubewire binary")
    ap.add_argument("--workdir", default=os.path.join(REPO, "target", "faults"))
    ap.add_argument("--sink", choices=["nats", "kafka", "file"], help="override each scenario's sink")
    ap.add_argument("--rate", type=float, help="churn writes per second")
    ap.add_argument("--namespaces", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep namespaces/streams of passing runs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=SECONDS",
                    help="override a duration or count, e.g. kafka_outage=60, revoked_for=30")
    o = ap.parse_args(argv)
    ci = o.ci
    defaults = dict(
        rate=30 if ci else 60, warmup=2 if ci else 8, after=2 if ci else 8,
        kill_rounds=10 if ci else 12, kill_min=0.3 if ci else 1.0, kill_max=1.5 if ci else 5.0,
        kafka_outage=8 if ci else 45, compaction_for=12 if ci else 60, compaction_every=2 if ci else 3,
        watch_timeout=4 if ci else 8, idle_timeout=5 if ci else 10, stall=7 if ci else 15,
        revoked_for=40 if ci else 45, credentials_for=15 if ci else 45,
    )
    for k, v in defaults.items():
        if getattr(o, k, None) is None:
            setattr(o, k, v)
    for kv in o.set:
        k, _, v = kv.partition("=")
        if k not in defaults:
            ap.error(f"--set {k}: not one of {', '.join(defaults)}")
        setattr(o, k, type(defaults[k])(float(v)) if isinstance(defaults[k], int) else float(v))
    os.makedirs(o.workdir, exist_ok=True)
    names = o.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    results = [run_scenario(n, o) for n in names]
    print("\n".join(["", "== fault suite =="] + [v for _, v in results]), flush=True)
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
