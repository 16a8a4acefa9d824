"""Churn workload for the fault suite.

Creates, updates and deletes ConfigMaps and one custom resource (`churns.faults.kubewire.dev`,
created by `ensure_crd`) in several namespaces, at a configurable rate: one thread per
namespace, each owning its namespace's objects, so no two writers race on one object. From
time to time a thread deletes every object of its namespace (a DELETE of the collection) and
later recreates objects with the same names (new uids).

Every write whose outcome is known is appended to a journal (JSON lines: op, resource,
namespace, name, uid, resourceVersion), which the checker uses to prove that no version the
workload produced went missing downstream. A write whose response was lost (the API server
was stopped mid-request) is retried idempotently and journaled with what the server then
reports.

    churn.py --namespaces a,b,c --rate 40 --journal j.jsonl --stop-file STOP [--pause-file P]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time

from kube import ApiError, Kube, resource_path

CRD_GROUP, CRD_PLURAL, CRD_KIND = "faults.kubewire.dev", "churns", "Churn"
CRD_NAME = f"{CRD_PLURAL}.{CRD_GROUP}"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# (group, version, plural) of the two churned resources
RESOURCES = {
    "configmaps": ("", "v1", "configmaps"),
    "churns": (CRD_GROUP, "v1", CRD_PLURAL),
}


def ensure_crd(kube: Kube) -> None:
    """Creates the CRD if missing and waits until it is Established."""
    body = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {"plural": CRD_PLURAL, "singular": "churn", "kind": CRD_KIND},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    try:
        kube.retrying("POST", path, body)
    except ApiError as e:
        if e.status != 409:
            raise
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        crd = kube.retrying("GET", f"{path}/{CRD_NAME}")
        conds = (crd.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
            return
        time.sleep(0.2)
    raise SystemExit(f"CRD {CRD_NAME} not Established within 60 s")


def ensure_namespace(kube: Kube, ns: str) -> None:
    try:
        kube.retrying("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    except ApiError as e:
        if e.status != 409:
            raise


class Journal:
    def __init__(self, path: str):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def write(self, op: str, res: str, ns: str, name: str, obj: dict | None, uid=None):
        md = (obj or {}).get("metadata", {})
        rec = {
            "t": time.time(),
            "op": op,
            "res": res,
            "ns": ns,
            "name": name,
            "uid": md.get("uid", uid),
            "rv": md.get("resourceVersion"),
        }
        with self.lock:
            self.f.write(json.dumps(rec) + "\n")


class Worker(threading.Thread):
    """Owns one namespace: a model of which names exist (name -> uid)."""

    def __init__(self, kube, ns, rate, journal, stop_file, pause_file, seed, stats, opts):
        super().__init__(daemon=True)
        self.kube, self.ns, self.rate, self.j = kube, ns, rate, journal
        self.stop_file, self.pause_file = stop_file, pause_file
        self.rng = random.Random(seed)
        self.stats = stats
        self.opts = opts
        self.exists: dict[tuple[str, str], str] = {}
        self.counter = 0
        self.error: Exception | None = None

    def path(self, res, name=None):
        g, v, p = RESOURCES[res]
        return resource_path(g, v, p, self.ns, name)

    def body(self, res: str, name: str) -> dict:
        self.counter += 1
        md = {"name": name, "labels": {"churn": "yes", "gen": str(self.counter % 7)}}
        if self.rng.random() < 0.2:
            # exercised by the checker's "modulo transforms" comparison
            md["annotations"] = {LAST_APPLIED: json.dumps({"n": self.counter}), "note": "ü"}
        payload = "x" * self.rng.randint(10, self.opts.max_value)
        if res == "configmaps":
            return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": md,
                    "data": {"n": str(self.counter), "pad": payload}}
        return {"apiVersion": f"{CRD_GROUP}/v1", "kind": CRD_KIND, "metadata": md,
                "spec": {"n": self.counter, "pad": payload}}

    def create(self, res, name):
        try:
            obj = self.kube.retrying("POST", self.path(res), self.body(res, name))
        except ApiError as e:
            if e.status != 409:
                raise
            # a create whose response was lost during a fault: it did happen
            obj = self.kube.retrying("GET", self.path(res, name))
        self.exists[(res, name)] = obj["metadata"]["uid"]
        self.j.write("create", res, self.ns, name, obj)
        self.stats["create"] += 1

    def update(self, res, name):
        self.counter += 1
        patch = ({"data": {"n": str(self.counter)}} if res == "configmaps"
                 else {"spec": {"n": self.counter}})
        if self.rng.random() < 0.2:
            patch["metadata"] = {"labels": {"gen": str(self.counter % 7)}}
        try:
            obj = self.kube.retrying("PATCH", self.path(res, name), patch,
                                     content_type="application/merge-patch+json")
        except ApiError as e:
            if e.status != 404:
                raise
            self.exists.pop((res, name), None)
            return
        self.j.write("update", res, self.ns, name, obj)
        self.stats["update"] += 1

    def delete(self, res, name):
        uid = self.exists.pop((res, name))
        try:
            obj = self.kube.retrying("DELETE", self.path(res, name))
        except ApiError as e:
            if e.status != 404:
                raise
            obj = None
        self.j.write("delete", res, self.ns, name, None, uid=uid)
        self.stats["delete"] += 1

    def wipe(self):
        """Deletes every object of the namespace (both resources), like clearing it out."""
        for res in RESOURCES:
            out = self.kube.retrying("DELETE", self.path(res))
            for it in (out or {}).get("items", []):
                md = it.get("metadata", {})
                self.j.write("delete", res, self.ns, md.get("name"), None, uid=md.get("uid"))
                self.stats["delete"] += 1
            # the collection delete may race with nothing (we own the namespace)
            for key in [k for k in self.exists if k[0] == res]:
                self.exists.pop(key)
        self.stats["wipe"] += 1

    def step(self):
        if self.rng.random() < self.opts.wipe_probability:
            self.wipe()
            return
        res = "churns" if self.rng.random() < 0.25 else "configmaps"
        pool = self.opts.cm_names if res == "configmaps" else self.opts.cr_names
        name = f"{'cm' if res == 'configmaps' else 'cr'}-{self.rng.randrange(pool)}"
        if (res, name) in self.exists:
            if self.rng.random() < 0.75:
                self.update(res, name)
            else:
                self.delete(res, name)
        else:
            self.create(res, name)

    def run(self):
        interval = 1.0 / self.rate if self.rate > 0 else 0
        next_t = time.monotonic()
        try:
            while not os.path.exists(self.stop_file):
                if self.pause_file and os.path.exists(self.pause_file):
                    time.sleep(0.05)
                    next_t = time.monotonic()
                    continue
                self.step()
                next_t += interval
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_t = time.monotonic()  # behind (fault): do not burst to catch up
        except Exception as e:  # noqa: BLE001 - reported by main
            self.error = e


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kubeconfig")
    ap.add_argument("--namespaces", required=True, help="comma-separated")
    ap.add_argument("--rate", type=float, default=40.0, help="writes per second, in total")
    ap.add_argument("--journal", required=True)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--pause-file")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--cm-names", type=int, default=30, help="ConfigMap names per namespace")
    ap.add_argument("--cr-names", type=int, default=10, help="custom resource names per ns")
    ap.add_argument("--wipe-probability", type=float, default=0.004,
                    help="chance per write that a namespace is cleared instead")
    ap.add_argument("--max-value", type=int, default=400, help="largest padding value")
    opts = ap.parse_args(argv)
    kube = Kube(opts.kubeconfig, timeout=10.0)
    nss = [n for n in opts.namespaces.split(",") if n]
    ensure_crd(kube)
    for ns in nss:
        ensure_namespace(kube, ns)
    journal = Journal(opts.journal)
    stats = {"create": 0, "update": 0, "delete": 0, "wipe": 0}
    workers = [
        Worker(kube, ns, opts.rate / len(nss), journal, opts.stop_file, opts.pause_file,
               opts.seed + i, stats, opts)
        for i, ns in enumerate(nss)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    errors = [w.error for w in workers if w.error]
    writes = stats["create"] + stats["update"] + stats["delete"]
    print(f"churn: writes={writes} creates={stats['create']} updates={stats['update']} "
          f"deletes={stats['delete']} wipes={stats['wipe']} errors={len(errors)}", flush=True)
    for e in errors:
        print(f"churn: error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
