"""The fault suite's independent checker. It shares no code with kubewire.

    checker.py collect nats  --url URL --stream NAME --out capture.jsonl [--stop-file F]
    checker.py collect kafka --brokers B --topic T --out capture.jsonl [--stop-file F]
    checker.py verify (--file events.jsonl | --capture capture.jsonl) --namespaces a,b
                      [--journal churn.jsonl] [--scenario NAME] [--figure k=v ...]

`collect` follows a JetStream stream or a Kafka topic from its beginning and appends every
message (with its stream sequence / partition and offset, key and headers) to a capture file,
surviving server restarts and a deleted-then-recreated stream or topic (each incarnation is a
new `epoch`). `verify` reads a capture (or a file sink's output), lists the cluster directly
from the API server and checks:

- every object in the cluster has a final event (per uid and per key) whose data equals the
  object modulo the documented transforms (managedFields and the last-applied annotation
  stripped);
- every object seen downstream but gone from the cluster ends with `deleted` (or a Kafka
  tombstone);
- per object (uid) and per key, resourceVersions never go backwards, except exact duplicates
  (same id, same content) and a relist `deleted` carrying the last published version;
- with a churn journal: every version the workload wrote is downstream, or inside the
  range of a relist marker of its stream (history compressed, announced);
- every line parses, except legitimate torn lines (`torn_line_problem`);
- something was verified: object events downstream or objects in the cluster;
and prints one verdict line with the figures; exit 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import defaultdict

OBJ = "io.kubewire.object."
RELISTED = "io.kubewire.stream.relisted"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# resource name -> (group, version, plural) the checker lists
RESOURCES = {
    "configmaps": ("", "v1", "configmaps"),
    "churns": ("faults.kubewire.dev", "v1", "churns"),
}


# ---------------------------------------------------------------- collect


def _stopped(stop_file):
    return stop_file is not None and os.path.exists(stop_file)


async def collect_nats(url, stream, out, stop_file, idle_exit):
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                            allow_reconnect=True)
    js = nc.jetstream()
    epoch, next_seq, created = 0, 1, None
    sub = None
    with open(out, "a", buffering=1) as f:
        last_msg = time.monotonic()
        while True:
            if _stopped(stop_file) and time.monotonic() - last_msg > idle_exit:
                break
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                sub = None
                await asyncio.sleep(0.2)
                continue
            except Exception:  # noqa: BLE001 - server away: retry
                sub = None
                await asyncio.sleep(0.3)
                continue
            if created is None:
                created = info.created
            elif info.created != created:
                # deleted and created again: a new incarnation, sequences restart
                epoch, next_seq, created, sub = epoch + 1, 1, info.created, None
                f.write(json.dumps({"epoch": epoch, "event": "stream-recreated"}) + "\n")
            if info.state.last_seq < next_seq:
                await asyncio.sleep(0.1)
                continue
            try:
                if sub is None:
                    subjects = info.config.subjects or [">"]
                    sub = await js.pull_subscribe(
                        subjects[0] if len(subjects) == 1 else ">",
                        stream=stream,
                        config=ConsumerConfig(
                            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                            opt_start_seq=next_seq,
                            ack_policy=AckPolicy.NONE,
                            inactive_threshold=30.0,
                        ),
                    )
                msgs = await sub.fetch(1000, timeout=1.0)
            except Exception:  # noqa: BLE001 - timeout, consumer gone, server away
                sub = None if not isinstance(sys.exc_info()[1], nats.errors.TimeoutError) else sub
                continue
            for m in msgs:
                seq = m.metadata.sequence.stream
                if seq < next_seq:
                    continue
                rec = {
                    "epoch": epoch,
                    "seq": seq,
                    "subject": m.subject,
                    "msgid": (m.headers or {}).get("Nats-Msg-Id"),
                    "value": m.data.decode("utf-8", "replace"),
                }
                if seq != next_seq:
                    rec["gap_from"] = next_seq
                f.write(json.dumps(rec) + "\n")
                next_seq = seq + 1
                last_msg = time.monotonic()
    await nc.close()


def collect_kafka(brokers, topic, out, stop_file, idle_exit):
    """Follows `topic` from offset 0 of every partition. The topic's id is checked a few
    times a second: while the topic is missing nothing is assigned, and a topic with a new
    id (deleted and created again) is a new epoch read from offset 0, so no record of the
    new topic is skipped because the old one had reached a higher offset."""
    from confluent_kafka import Consumer, KafkaError, TopicCollection, TopicPartition
    from confluent_kafka.admin import AdminClient

    conf = {"bootstrap.servers": brokers, "log_level": 0}
    admin = AdminClient(conf)
    c = Consumer({
        **conf,
        "group.id": f"kwcheck-{os.getpid()}-{time.time_ns()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "topic.metadata.refresh.interval.ms": 1000,
        "reconnect.backoff.max.ms": 1000,
    })

    def topic_state():
        """(topic id, partitions) or None when the topic does not exist / is unreachable."""
        try:
            d = admin.describe_topics(TopicCollection([topic]), request_timeout=3)[topic].result()
            return str(d.topic_id), [p.id for p in d.partitions]
        except Exception:  # noqa: BLE001 - missing topic or broker away
            return None

    epoch, pos, topic_id, assigned, last_check = 0, {}, None, False, 0.0
    with open(out, "a", buffering=1) as f:
        last_msg = time.monotonic()
        while True:
            if _stopped(stop_file) and time.monotonic() - last_msg > idle_exit:
                break
            if time.monotonic() - last_check > 0.25 or not assigned:
                last_check = time.monotonic()
                st = topic_state()
                if st is None or not st[1]:
                    if assigned:
                        c.unassign()
                        assigned = False
                    time.sleep(0.2)
                    continue
                tid, parts = st
                if topic_id is not None and tid != topic_id:
                    if assigned:
                        c.unassign()
                        assigned = False
                    epoch, pos = epoch + 1, {}
                    f.write(json.dumps({"epoch": epoch, "event": "topic-recreated"}) + "\n")
                topic_id = tid
                if not assigned:
                    c.assign([TopicPartition(topic, p, pos.get(p, 0)) for p in sorted(parts)])
                    assigned = True
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF and assigned:
                    c.unassign()  # re-check the topic, then assign again where we were
                    assigned = False
                continue
            p, off = m.partition(), m.offset()
            if off < pos.get(p, 0):
                continue  # already have it (re-assigned)
            v = m.value()
            rec = {
                "epoch": epoch,
                "partition": p,
                "offset": off,
                "key": (m.key() or b"").decode("utf-8", "replace"),
                "ce_id": dict((k, (v2 or b"").decode()) for k, v2 in (m.headers() or [])).get("ce_id"),
                "value": None if v is None else v.decode("utf-8", "replace"),
            }
            if off != pos.get(p, 0):
                rec["gap_from"] = pos.get(p, 0)
            f.write(json.dumps(rec) + "\n")
            pos[p] = off + 1
            last_msg = time.monotonic()
    c.close()


# ---------------------------------------------------------------- verify


def rv_int(rv):
    try:
        return int(rv)
    except (TypeError, ValueError):
        return None


def strip(obj: dict) -> dict:
    """The documented default transforms (docs/event-format.md), applied to a listed object."""
    obj = json.loads(json.dumps(obj))
    md = obj.get("metadata", {})
    md.pop("managedFields", None)
    ann = md.get("annotations")
    if isinstance(ann, dict):
        ann.pop(LAST_APPLIED, None)
        if not ann:
            md.pop("annotations")
    return obj


# How a CloudEvents document from kubewire opens (src/envelope: `specversion`, then `id`).
ENVELOPE_OPENING = '{"specversion":"1.0","id":"'


def torn_line_problem(line: str, later_ids: set, last: bool):
    """None when unparsable line `line` of a file sink's output is a legitimate torn line,
    else what is wrong with it.

    The rule (src/sink/lines.rs): kill -9 in the middle of a write leaves a partial last
    line; when kubewire opens the file again it ends that line with a newline and appends
    after it. The torn event was not acknowledged, so it is not in the checkpoint and the
    restarted kubewire publishes it again. So an unparsable line is legitimate when it is
    the file's last line (killed, not restarted), or when it is the opening of an envelope
    cut short - a prefix of `{"specversion":"1.0","id":"<id>",...` - and, if the cut came
    after the id, a complete event with that id follows later in the file (the replay).
    Anything else (garbage, a line that is not an envelope, a torn event never replayed)
    is a violation."""
    if last:
        return None
    n = len(ENVELOPE_OPENING)
    if len(line) <= n:
        return None if ENVELOPE_OPENING.startswith(line) else "not the opening of an event"
    if not line.startswith(ENVELOPE_OPENING):
        return "not the opening of an event"
    end = line.find('"', n)
    if end < 0:
        return None  # cut inside the id: nothing more to check
    eid = line[n:end]
    if eid not in later_ids:
        return f"torn event {eid} was never published again after it"
    return None


def load_records(args):
    """([(group, value-or-None, key-or-None)] in per-group order, torn lines, capture gaps,
    [problems]). Groups: file; NATS epoch; Kafka (epoch, partition). All events of one key
    are in one group. Problems are unparsable lines that are not legitimate torn lines."""
    out, torn, gaps, problems = [], 0, 0, []
    if args.file:
        with open(args.file, encoding="utf-8", errors="replace") as f:
            lines = [(i + 1, line.rstrip("\n")) for i, line in enumerate(f)]
        lines = [(no, line) for no, line in lines if line]
        parsed = []
        for no, line in lines:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                e = None
            parsed.append((no, line, e))
        later_ids: set = set()
        for i in range(len(parsed) - 1, -1, -1):
            no, line, e = parsed[i]
            if e is None:
                why = torn_line_problem(line, later_ids, last=i == len(parsed) - 1)
                if why is None:
                    torn += 1
                else:
                    problems.append(f"{args.file}:{no}: unparsable line: {why}: {line[:120]!r}")
            elif isinstance(e, dict):
                later_ids.add(e.get("id"))
        out = [(("file",), line, None) for _, line, e in parsed if e is not None]
        return out, torn, gaps, problems
    recs = []
    with open(args.capture) as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            # the collector writes whole lines: only its last one can be cut short (killed)
            if i == len(lines) - 1:
                torn += 1
            else:
                problems.append(f"{args.capture}:{i + 1}: unparsable capture line {line[:120]!r}")
            continue
        if "value" not in r:
            continue
        if "gap_from" in r:
            gaps += r.get("seq", r.get("offset", 0)) - r["gap_from"]
        if "partition" in r:
            recs.append(((r["epoch"], r["partition"]), r["offset"], r["value"], r["key"]))
        else:
            recs.append(((r["epoch"],), r["seq"], r["value"], None))
    recs.sort(key=lambda r: (r[0], r[1]))
    return [(g, v, k) for g, _, v, k in recs], torn, gaps, problems


class Verdict:
    def __init__(self):
        self.violations = defaultdict(list)

    def bad(self, kind, detail):
        self.violations[kind].append(detail)


def verify(args):
    from kube import Kube, resource_path

    v = Verdict()
    records, torn_lines, seq_gaps, unparsable = load_records(args)
    for prob in unparsable:
        v.bad("unparsable", prob)
    seen_ids: dict[str, dict] = {}
    uid_last: dict[str, dict] = {}  # uid -> last (deduplicated) event
    uid_max: dict[str, int] = {}
    key_last: dict[tuple, dict] = {}  # (resource, ns, name) -> last event or tombstone
    key_max: dict[tuple, int] = {}
    versions: set[tuple] = set()  # (uid, rv) published
    markers: dict[tuple, list] = defaultdict(list)  # (resource, ns) -> [(from, to)]
    c = defaultdict(int)
    for group, value, kafka_key in records:
        c["messages"] += 1
        if value is None:  # Kafka tombstone
            c["tombstones"] += 1
            ns, _, name = kafka_key.rpartition("/")
            for res in RESOURCES:
                if (res, ns, name) in key_last:
                    key_last[(res, ns, name)] = {"type": "tombstone"}
            continue
        try:
            e = json.loads(value)
        except json.JSONDecodeError:
            # a message kubewire published whole (file lines are sorted out by load_records)
            v.bad("unparsable", f"message {c['messages']} of {group}: {value[:120]!r}")
            continue
        if not isinstance(e, dict):
            v.bad("unparsable", f"message {c['messages']} of {group} is not an object: {value[:120]!r}")
            continue
        eid, typ = e.get("id"), e.get("type", "")
        if eid in seen_ids:
            c["duplicates"] += 1
            first = seen_ids[eid]
            # A relist's synthetic Deleted (kubewireorigin relist) carries only the identity
            # kubewire stored (docs/delivery.md), so when it repeats a Deleted that was
            # already downstream its data is that identity, not the last object: every other
            # field must still match.
            synthetic = typ.endswith(".deleted") and "relist" in (
                first.get("kubewireorigin"),
                e.get("kubewireorigin"),
            )
            for fld in ("type", "k8suid", "k8sresourceversion", "k8snamespace", "k8sname", "data"):
                if fld == "data" and synthetic:
                    continue
                if first.get(fld) != e.get(fld):
                    v.bad("duplicate-differs", f"{eid}: {fld}")
            # A copy is what lands last under its object and key as much as the first one
            # was: a stale copy after newer versions leaves the key at the stale state, and
            # the final-state checks below must see that.
            if typ.startswith(OBJ) and e.get("k8suid"):
                uid_last[e["k8suid"]] = e
                key_last[(e.get("k8sresource"), e.get("k8snamespace"), e.get("k8sname"))] = e
            continue
        seen_ids[eid] = e
        if typ == RELISTED:
            c["relist_markers"] += 1
            d = e.get("data", {})
            markers[(e.get("k8sresource"), e.get("k8snamespace"))].append(
                (rv_int(d.get("fromResourceVersion")) or 0, rv_int(d.get("toResourceVersion")) or 0)
            )
            continue
        if not typ.startswith(OBJ):
            c["other"] += 1
            continue
        c["object_events"] += 1
        origin = e.get("kubewireorigin")
        c[f"origin_{origin}"] += 1
        uid, rv = e.get("k8suid"), rv_int(e.get("k8sresourceversion"))
        key = (e.get("k8sresource"), e.get("k8snamespace"), e.get("k8sname"))
        if rv is None or not uid:
            v.bad("malformed", eid)
            continue
        if args.cluster and e.get("k8scluster") != args.cluster:
            v.bad("wrong-cluster", eid)
        if eid != f"{e.get('k8scluster')}/{uid}/{e.get('k8sresourceversion')}/{typ[len(OBJ):]}":
            v.bad("id-not-deterministic", eid)
        relist_delete = typ == OBJ + "deleted" and origin == "relist"
        for state, k in ((uid_max, uid), (key_max, key)):
            prev = state.get(k)
            if prev is not None and (rv < prev or (rv == prev and not relist_delete)):
                v.bad("order", f"{k}: {prev} then {rv} ({eid})")
            state[k] = max(rv, prev or 0)
        versions.add((uid, rv))
        uid_last[uid] = e
        key_last[key] = e

    # ---- the cluster, listed directly
    kube = Kube(args.kubeconfig)
    namespaces = [n for n in args.namespaces.split(",") if n]
    cluster: dict[str, dict] = {}
    for res in args.resources.split(","):
        g, ver, plural = RESOURCES[res]
        for ns in namespaces:
            items, _ = kube.list_all(resource_path(g, ver, plural, ns))
            for it in items:
                it["_res"] = res
                cluster[it["metadata"]["uid"]] = it
    c["cluster_objects"] = len(cluster)

    # every object in the cluster: its final event equals it
    for uid, obj in cluster.items():
        md = obj["metadata"]
        key = (obj["_res"], md["namespace"], md["name"])
        want = strip({k: vv for k, vv in obj.items() if k != "_res"})
        last = uid_last.get(uid)
        if last is None:
            v.bad("lost", f"{key} uid {uid} rv {md['resourceVersion']}: no event at all")
            continue
        if last["type"] == OBJ + "deleted":
            v.bad("lost", f"{key} uid {uid}: ends deleted but exists at {md['resourceVersion']}")
            continue
        if last.get("k8sresourceversion") != md["resourceVersion"]:
            v.bad("lost", f"{key}: last event rv {last.get('k8sresourceversion')}, "
                          f"cluster rv {md['resourceVersion']}")
            continue
        if last.get("data") != want:
            v.bad("data-differs", f"{key} rv {md['resourceVersion']}: {diff(last.get('data'), want)}")
        kl = key_last.get(key)
        if kl is None or kl.get("k8suid") != uid or kl.get("type") == "tombstone":
            v.bad("key-final", f"{key}: last event under the key is not the live object")

    # every object downstream but not in the cluster ends deleted
    live_keys = {(o["_res"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in cluster.values()}
    for uid, last in uid_last.items():
        if uid not in cluster and last["type"] != OBJ + "deleted":
            k = (last.get("k8sresource"), last.get("k8snamespace"), last.get("k8sname"))
            if key_last.get(k, {}).get("type") == "tombstone" and k not in live_keys:
                continue
            v.bad("not-deleted", f"{k} uid {uid}: gone from the cluster, last event {last['type']}")
            c["ghosts"] += 1
    for k, last in key_last.items():
        if k not in live_keys and last.get("type") not in (OBJ + "deleted", "tombstone"):
            v.bad("key-not-deleted", f"{k}: last event under the key is {last.get('type')}")
    c["deleted_objects"] = sum(1 for u, e in uid_last.items() if e["type"] == OBJ + "deleted")

    # every version the churn wrote is downstream or inside an announced relist range
    if args.journal:
        with open(args.journal) as f:
            for line in f:
                j = json.loads(line)
                if j["op"] not in ("create", "update") or j.get("rv") is None:
                    continue
                c["journal_writes"] += 1
                rv = int(j["rv"])
                if (j["uid"], rv) in versions:
                    continue
                if any(fr < rv <= to for fr, to in markers.get((j["res"], j["ns"]), [])):
                    c["compressed"] += 1
                    continue
                v.bad("lost", f"write {j['op']} {j['res']} {j['ns']}/{j['name']} uid {j['uid']} "
                              f"rv {rv}: not downstream, not in a relist range")
    if c["object_events"] == 0 and c["cluster_objects"] == 0:
        v.bad("nothing-verified", f"no object events in {args.file or args.capture} and no "
                                  f"{args.resources} in namespaces {args.namespaces}: "
                                  "nothing was verified (wrong input or namespaces?)")
    for prob in args.problem or []:
        v.bad("scenario", prob)
    if seq_gaps:
        v.bad("capture-gap", f"{seq_gaps} stream sequence numbers skipped by the collector")

    vs = v.violations
    figures = {
        "events": c["messages"],
        "object_events": c["object_events"],
        "duplicates": c["duplicates"],
        # versions or final states missing downstream, deletes included
        "lost": len(vs.get("lost", [])) + len(vs.get("not-deleted", [])),
        "misordered": len(vs.get("order", [])),
        # keys whose last event is not the object's current state (what a compacted topic or
        # a last-per-subject reader keeps)
        "stale_keys": len(vs.get("key-final", [])) + len(vs.get("key-not-deleted", [])),
        "relist_markers": c["relist_markers"],
        "synthetic": c["origin_relist"],
        "initial": c["origin_initial"],
        "compressed_versions": c["compressed"],
        "tombstones": c["tombstones"],
        "torn_lines": torn_lines,
        "cluster_objects": c["cluster_objects"],
        "deleted_objects": c["deleted_objects"],
        "churn_writes": c["journal_writes"],
    }
    for fig in args.figure or []:
        k, _, val = fig.partition("=")
        figures[k] = val
    ok = not v.violations
    bad = " ".join(f"{k}={len(x)}" for k, x in sorted(v.violations.items()))
    line = f"VERDICT {args.scenario}: {'PASS' if ok else 'FAIL'} " + " ".join(
        f"{k}={val}" for k, val in figures.items()
    ) + (f" violations: {bad}" if bad else "")
    for kind, items in sorted(v.violations.items()):
        for d in items[:10]:
            print(f"  {kind}: {d}", file=sys.stderr)
        if len(items) > 10:
            print(f"  {kind}: ... {len(items) - 10} more", file=sys.stderr)
    print(line, flush=True)
    if args.verdict_file:
        with open(args.verdict_file, "a") as f:
            f.write(line + "\n")
    return 0 if ok else 1


def diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return diff(a.get(k), b.get(k), f"{path}.{k}")
        return path or "(equal)"
    return f"{path or '.'}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sp = ap.add_subparsers(dest="cmd", required=True)
    cn = sp.add_parser("collect")
    cn.add_argument("sink", choices=["nats", "kafka"])
    cn.add_argument("--url", default=os.environ.get("NATS_URL"))
    cn.add_argument("--stream")
    cn.add_argument("--brokers", default=os.environ.get("KAFKA_BROKERS"))
    cn.add_argument("--topic")
    cn.add_argument("--out", required=True)
    cn.add_argument("--stop-file", help="exit once this exists and nothing came for --idle-exit s")
    cn.add_argument("--idle-exit", type=float, default=2.0)
    vf = sp.add_parser("verify")
    src = vf.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="a file sink's output")
    src.add_argument("--capture", help="a capture written by collect")
    vf.add_argument("--kubeconfig")
    vf.add_argument("--namespaces", required=True)
    vf.add_argument("--resources", default="configmaps,churns")
    vf.add_argument("--cluster", default="default", help="expected k8scluster")
    vf.add_argument("--journal")
    vf.add_argument("--scenario", default="check")
    vf.add_argument("--figure", action="append", help="k=v added to the verdict line")
    vf.add_argument("--problem", action="append", help="a problem the scenario found (FAIL)")
    vf.add_argument("--verdict-file", help="append the verdict line here too")
    args = ap.parse_args(argv)
    if args.cmd == "collect":
        if args.sink == "nats":
            asyncio.run(collect_nats(args.url, args.stream, args.out, args.stop_file, args.idle_exit))
        else:
            collect_kafka(args.brokers, args.topic, args.out, args.stop_file, args.idle_exit)
        return 0
    return verify(args)


if __name__ == "__main__":
    sys.exit(main())
