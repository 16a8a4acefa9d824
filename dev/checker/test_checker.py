"""Self-tests of checker.py verify: each feeds a small sink output and a fake cluster listing
and asserts the verdict, so that a checker that stops seeing a violation fails here.

    dev/checker/run test_checker.py      (dev/test runs it; only the standard library is used)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checker  # noqa: E402

NS = "ns1"


def configmap(name, uid, rv, value):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NS, "uid": uid, "resourceVersion": str(rv)},
            "data": {"value": value}}


def event(obj, typ="modified", origin="watch"):
    md = obj["metadata"]
    return {
        "specversion": "1.0",
        "id": f"default/{md['uid']}/{md['resourceVersion']}/{typ}",
        "source": "kubewire/default",
        "type": f"io.kubewire.object.{typ}",
        "k8scluster": "default", "k8sresource": "configmaps", "k8snamespace": NS,
        "k8sname": md["name"], "k8suid": md["uid"], "k8sresourceversion": md["resourceVersion"],
        "kubewireorigin": origin,
        "data": obj,
    }


def line(e):
    return json.dumps(e, separators=(",", ":"))


class FakeKube:
    """kube.Kube listing a fixed set of objects (the cluster as the test wants it)."""
    objects: list = []

    def __init__(self, kubeconfig=None):
        pass

    def list_all(self, path):
        if "/configmaps" in path:
            return [o for o in FakeKube.objects if f"/namespaces/{o['metadata']['namespace']}/" in path + "/"], "1"
        return [], "1"


def resource_path(group, version, plural, namespace, name=None):
    base = f"/api/{version}" if group in ("", "core") else f"/apis/{group}/{version}"
    return base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"


class VerifyTest(unittest.TestCase):
    def setUp(self):
        sys.modules["kube"] = types.SimpleNamespace(Kube=FakeKube, resource_path=resource_path)
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def verify(self, text, cluster, *, capture=False):
        """(exit code, verdict line, stderr) of checker.py verify."""
        FakeKube.objects = cluster
        path = os.path.join(self.dir.name, "out.jsonl")
        with open(path, "w") as f:
            f.write(text)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = checker.main(["verify", "--capture" if capture else "--file", path,
                                 "--namespaces", NS, "--resources", "configmaps"])
        return code, out.getvalue().strip().splitlines()[-1], err.getvalue()

    # -- the baseline: a clean stream passes, so each failure below is the one thing changed
    def test_a_stream_that_ends_at_the_cluster_state_passes(self):
        a1, a2 = configmap("a", "u1", 10, "1"), configmap("a", "u1", 11, "2")
        code, verdict, err = self.verify(line(event(a1, "added")) + "\n" + line(event(a2)) + "\n", [a2])
        self.assertEqual(code, 0, verdict + err)
        self.assertIn(": PASS ", verdict)

    def test_replayed_copies_ending_at_the_newest_version_pass(self):
        a1, a2 = configmap("a", "u1", 10, "1"), configmap("a", "u1", 11, "2")
        text = "".join(line(e) + "\n" for e in [event(a1, "added"), event(a2), event(a1, "added"), event(a2)])
        code, verdict, err = self.verify(text, [a2])
        self.assertEqual(code, 0, verdict + err)
        self.assertIn(" duplicates=2 ", verdict)

    # -- gap: a stale duplicate landing last under its key
    def test_a_stale_duplicate_landing_last_under_its_key_fails(self):
        a1, a2 = configmap("a", "u1", 10, "1"), configmap("a", "u1", 11, "2")
        text = "".join(line(e) + "\n" for e in [event(a1, "added"), event(a2), event(a1, "added")])
        code, verdict, err = self.verify(text, [a2])
        self.assertEqual(code, 1, verdict)
        self.assertIn(": FAIL ", verdict)
        self.assertIn("lost", verdict)
        self.assertIn("last event rv 10, cluster rv 11", err)

    def test_a_stale_duplicate_of_a_deleted_object_landing_last_fails(self):
        a1 = configmap("a", "u1", 10, "1")
        gone = configmap("a", "u1", 12, "1")
        text = "".join(line(e) + "\n" for e in [event(a1, "added"), event(gone, "deleted"), event(a1, "added")])
        code, verdict, err = self.verify(text, [])
        self.assertEqual(code, 1, verdict)
        self.assertIn("not-deleted=1", verdict)

    # -- gap: unparsable lines
    def test_a_torn_last_line_is_counted_not_a_violation(self):
        a1 = configmap("a", "u1", 10, "1")
        text = line(event(a1, "added")) + "\n" + line(event(configmap("a", "u1", 11, "2")))[:60]
        code, verdict, err = self.verify(text, [a1])
        self.assertEqual(code, 0, verdict + err)
        self.assertIn(" torn_lines=1 ", verdict)

    def test_a_torn_line_replayed_after_the_restart_is_legitimate(self):
        a1, a2 = configmap("a", "u1", 10, "1"), configmap("a", "u1", 11, "2")
        torn = line(event(a2))[:80]  # cut after the id: kill -9 mid-write
        text = "".join(x + "\n" for x in [line(event(a1, "added")), torn, line(event(a2))])
        code, verdict, err = self.verify(text, [a2])
        self.assertEqual(code, 0, verdict + err)
        self.assertIn(" torn_lines=1 ", verdict)

    def test_a_torn_line_cut_before_its_id_is_legitimate(self):
        a1 = configmap("a", "u1", 10, "1")
        text = "".join(x + "\n" for x in [line(event(a1, "added"))[:20], line(event(a1, "added"))])
        code, verdict, err = self.verify(text, [a1])
        self.assertEqual(code, 0, verdict + err)

    def test_a_torn_line_never_published_again_fails(self):
        a1, a2 = configmap("a", "u1", 10, "1"), configmap("b", "u2", 11, "2")
        text = "".join(x + "\n" for x in [line(event(a2, "added"))[:80], line(event(a1, "added"))])
        code, verdict, err = self.verify(text, [a1])
        self.assertEqual(code, 1, verdict)
        self.assertIn("unparsable=1", verdict)
        self.assertIn("never published again", err)

    def test_garbage_in_the_middle_of_a_file_fails(self):
        a1 = configmap("a", "u1", 10, "1")
        text = "".join(x + "\n" for x in [line(event(a1, "added")), "hello, not an event", line(event(a1, "added"))])
        code, verdict, err = self.verify(text, [a1])
        self.assertEqual(code, 1, verdict)
        self.assertIn("unparsable=1", verdict)

    def test_an_unparsable_message_in_a_capture_fails(self):
        a1 = configmap("a", "u1", 10, "1")
        recs = [{"epoch": 0, "seq": 1, "subject": "s", "msgid": "x", "value": line(event(a1, "added"))},
                {"epoch": 0, "seq": 2, "subject": "s", "msgid": "y", "value": line(event(a1))[:50]}]
        code, verdict, err = self.verify("".join(json.dumps(r) + "\n" for r in recs), [a1], capture=True)
        self.assertEqual(code, 1, verdict)
        self.assertIn("unparsable=1", verdict)

    # -- gap: verifying nothing
    def test_no_events_and_no_cluster_objects_fails(self):
        code, verdict, err = self.verify("", [])
        self.assertEqual(code, 1, verdict)
        self.assertIn("nothing-verified=1", verdict)
        self.assertIn("nothing was verified", err)


if __name__ == "__main__":
    unittest.main()
