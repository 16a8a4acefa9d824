"""The consumer side of dev/bench: reads one Kafka topic or NATS subject and writes, for
every event, one line `name resourceVersion receipt_unix_ns` to --out (flushed about every
50 ms), until SIGTERM/SIGINT.

Formats:
  kubewire    CloudEvents JSON (k8sname, k8sresourceversion)
  otlp_proto  the OpenTelemetry Collector kafka exporter's default log encoding; each log
              record's body is the k8sobjects watch event {type, object}
  otlp_json   the same in OTLP/JSON
Relist markers and events without an object name are skipped.
"""

import argparse
import json
import signal
import sys
import time

stop = False


def on_signal(*_):
    global stop
    stop = True


def kubewire_names(payload):
    doc = json.loads(payload)
    name = doc.get("k8sname")
    if name:
        yield name, doc.get("k8sresourceversion", "")


def _kv(kvlist):
    return {kv.key: kv.value for kv in kvlist.values}


def otlp_proto_names(payload):
    from opentelemetry.proto.logs.v1.logs_pb2 import LogsData

    data = LogsData()
    data.ParseFromString(payload)
    for rl in data.resource_logs:
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                body = _kv(rec.body.kvlist_value)
                obj = body.get("object")
                if obj is None:  # pull mode: the object itself
                    obj_kv = body
                else:
                    obj_kv = _kv(obj.kvlist_value)
                meta = obj_kv.get("metadata")
                if meta is None:
                    continue
                m = _kv(meta.kvlist_value)
                if "name" in m:
                    yield m["name"].string_value, m["resourceVersion"].string_value


def _json_kv(kvlist):
    return {kv["key"]: kv.get("value", {}) for kv in kvlist.get("values", [])}


def otlp_json_names(payload):
    data = json.loads(payload)
    for rl in data.get("resourceLogs", []):
        for sl in rl.get("scopeLogs", []):
            for rec in sl.get("logRecords", []):
                body = _json_kv(rec.get("body", {}).get("kvlistValue", {}))
                obj = body.get("object")
                obj_kv = body if obj is None else _json_kv(obj.get("kvlistValue", {}))
                meta = obj_kv.get("metadata")
                if meta is None:
                    continue
                m = _json_kv(meta.get("kvlistValue", {}))
                if "name" in m:
                    yield m["name"].get("stringValue", ""), m.get("resourceVersion", {}).get("stringValue", "")


DECODERS = {"kubewire": kubewire_names, "otlp_proto": otlp_proto_names, "otlp_json": otlp_json_names}


def run_kafka(args, decode, out):
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": f"kwbench-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # Receipt latency must be the pipeline's, not the consumer's long poll.
            "fetch.wait.max.ms": 5,
            "fetch.min.bytes": 1,
        }
    )
    c.subscribe([args.topic])
    last_flush = time.monotonic()
    while not stop:
        msgs = c.consume(num_messages=1000, timeout=0.05)
        now = time.time_ns()
        for m in msgs:
            if m.error() or m.value() is None:
                continue
            for name, rv in decode(m.value()):
                out.write(f"{name} {rv} {now}\n")
        if time.monotonic() - last_flush > 0.05:
            out.flush()
            last_flush = time.monotonic()
    out.flush()
    c.close()


def run_nats(args, decode, out):
    import asyncio

    import nats

    async def main():
        nc = await nats.connect(args.nats_url)

        async def handler(msg):
            now = time.time_ns()
            for name, rv in decode(msg.data):
                out.write(f"{name} {rv} {now}\n")

        await nc.subscribe(args.subject, cb=handler, pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30)
        await nc.flush()
        open(args.ready, "w").close() if args.ready else None
        while not stop:
            await asyncio.sleep(0.05)
            out.flush()
        await nc.drain()
        out.flush()

    asyncio.run(main())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--brokers")
    p.add_argument("--topic")
    p.add_argument("--nats-url")
    p.add_argument("--subject")
    p.add_argument("--format", choices=DECODERS, default="kubewire")
    p.add_argument("--out", required=True)
    p.add_argument("--ready", help="file touched once subscribed (NATS)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with open(args.out, "w", buffering=1 << 16) as out:
        if args.topic:
            run_kafka(args, DECODERS[args.format], out)
        elif args.subject:
            run_nats(args, DECODERS[args.format], out)
        else:
            sys.exit("need --topic or --subject")


if __name__ == "__main__":
    main()
