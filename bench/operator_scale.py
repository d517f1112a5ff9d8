#!/usr/bin/env python3
"""The operator at scale, on the test cluster (issue 16): JOBS BackupJobs with a daily schedule
in NAMESPACES namespaces, one operator watching all of them. Prints, and writes into
bench/RESULTS.md (section "Operator at scale"):

- how long until every BackupJob has been reconciled once (status.observedGeneration);
- the operator's peak and resting RSS (/proc/PID/status VmHWM, VmRSS);
- API requests per minute at rest (the API server's apiserver_request_total, by resource and
  verb, over REST seconds with nothing due): watches, not polling;
- the time from an on-demand Snapshot's creation to its pod's creation, p50 and p99 over
  SAMPLES Snapshots (of distinct jobs), each created while the others' pods exist.

Not a test: figures, not assertions. Needs the test cluster's API server and controller
manager (tests/cluster/start.sh; no kubelet: pods stay Pending, bound to fake Node objects
this script registers) and a snapcrypt binary (default target/release/snapcrypt).

Usage: eval "$(tests/cluster/env.sh)"
       ~/.cache/snapcrypt/venv/bin/python bench/operator_scale.py [--jobs 1000]
       [--namespaces 20] [--samples 50] [--rest 60] [--binary PATH] [--no-write]
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml  # PyYAML: the test venv's python (.ci/install-deps.sh) has it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABEL_UID = "snapcrypt.dev/snapshot-uid"
NODE = "bench-node"


def kubectl(*args, stdin=None, check=True):
    out = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit("kubectl %s: %s" % (" ".join(args[:3]), out.stderr.strip()))
    return out.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """The API server through `kubectl proxy` (the admin kubeconfig's credentials)."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(["kubectl", "proxy", "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.proc.stdout.readline()  # "Starting to serve on ..."
        self.base = "http://127.0.0.1:%d" % self.port

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def request_counts(api):
    """apiserver_request_total summed by (resource, verb), snapcrypt's kinds and what it
    reads; the cluster's own controllers use watches at rest too."""
    counts = {}
    text = api.call("GET", "/metrics").decode()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        key = (labels.get("resource", ""), labels.get("verb", ""))
        counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def manifests(ns, jobs):
    docs = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rs0-key", "namespace": ns},
         "stringData": {"key": KEY}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": "backups", "namespace": ns},
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}},
                  "storageClassName": "bench-none"}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "rs0-0", "namespace": ns, "labels": {"app": "rs0"}},
         "spec": {"nodeName": NODE,
                  "containers": [{"name": "mongod", "image": "bench/none",
                                  "volumeMounts": [{"name": "data", "mountPath": "/data/db"}]}],
                  "volumes": [{"name": "data",
                               "persistentVolumeClaim": {"claimName": "data-rs0-0"}}]}},
    ]
    for i in range(jobs):
        docs.append({
            "apiVersion": "snapcrypt.dev/v1alpha1", "kind": "BackupJob",
            "metadata": {"name": "job-%04d" % i, "namespace": ns},
            "spec": {
                "schedule": {"cron": "0 3 * * *"},
                "source": {"selector": {"matchLabels": {"app": "rs0"}}, "dataVolumeName": "data",
                           "syncSource": {"mode": "member", "member": "rs0-0"},
                           "consistency": {"mode": "stoppedMember"}},
                "destination": {"pvc": {"claimName": "backups", "path": "job-%04d" % i}},
                "encryption": {"localKeySecret": {"name": "rs0-key"}},
            }})
    return "\n".join(json.dumps(d) for d in docs)


def strip_cel(node):
    if isinstance(node, dict):
        return {k: strip_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [strip_cel(v) for v in node]
    return node


def percentile(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


def rss(pid):
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return fields["VmHWM"], fields["VmRSS"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--namespaces", type=int, default=20)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--rest", type=int, default=60)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/snapcrypt"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--wrap", default="", help="run the operator under this command (a heap "
                    "profiler, e.g. 'valgrind --tool=massif'); its figures are then the "
                    "wrapper's")
    a = ap.parse_args()
    per_ns = a.jobs // a.namespaces
    # Fresh names each run: the last run's namespaces may still be terminating.
    run_id = "%x" % (int(time.time()) % 0xFFFFF)
    namespaces = ["bench-scale-%s-%02d" % (run_id, i) for i in range(a.namespaces)]

    global KEY
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([a.binary, "key", "new", "--out", d + "/key.json"], check=True,
                       capture_output=True)
        KEY = open(d + "/key.json").read()
    crds = subprocess.run([a.binary, "crd"], check=True, capture_output=True, text=True).stdout
    # Servers before 1.25 know no CEL rules (x-kubernetes-validations): drop them there, as
    # the tests do; the operator's own validation still checks them.
    docs = [strip_cel(d) for d in yaml.safe_load_all(crds) if d]
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                   "items": docs}))
    kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE,
                                                        "labels": {"kubernetes.io/hostname": NODE}}}))
    api = Api()
    operator = None
    try:
        print("bench: creating %d BackupJobs in %d namespaces" % (per_ns * a.namespaces,
                                                                a.namespaces), flush=True)
        for ns in namespaces:
            kubectl("create", "namespace", ns)
            kubectl("apply", "-f", "-", stdin=manifests(ns, per_ns))

        http_port = free_port()
        started = time.monotonic()
        operator = subprocess.Popen(a.wrap.split() + [a.binary, "operator", "--http-port", str(http_port),
                                     "--http-bind", "127.0.0.1"],
                                    env=dict(os.environ, RUST_LOG="warn"),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def reconciled():
            items = json.loads(kubectl("get", "backupjobs", "-A", "-o", "json"))["items"]
            return sum(1 for j in items if (j.get("status") or {}).get("observedGeneration"))
        total = per_ns * a.namespaces
        while (n := reconciled()) < total:
            if time.monotonic() - started > 600:
                sys.exit("bench: only %d of %d BackupJobs reconciled after 600 s" % (n, total))
            time.sleep(1)
        converge = time.monotonic() - started
        print("bench: all %d reconciled %.1f s after the operator started" % (total, converge),
              flush=True)

        # At rest: nothing is due (daily schedule at 03:00).
        time.sleep(10)
        before = request_counts(api)
        time.sleep(a.rest)
        after = request_counts(api)
        per_min = {k: (after.get(k, 0) - before.get(k, 0)) * 60.0 / a.rest for k in after}
        resting = {k: v for k, v in per_min.items() if v > 0}
        hwm_rest, rss_rest = rss(operator.pid)

        # Latency: one on-demand Snapshot per sampled job, its pod's first sight by a watch.
        seen = {}
        stop = threading.Event()

        def watch():
            path = "/api/v1/pods?watch=1&labelSelector=%s" % LABEL_UID
            req = urllib.request.Request(api.base + path)
            with urllib.request.urlopen(req, timeout=3600) as r:
                for line in r:
                    if stop.is_set():
                        return
                    ev = json.loads(line)
                    uid = ev["object"]["metadata"].get("labels", {}).get(LABEL_UID)
                    if uid and uid not in seen:
                        seen[uid] = time.monotonic()
        t = threading.Thread(target=watch, daemon=True)
        t.start()
        time.sleep(1)
        latencies = []
        for s in range(a.samples):
            ns = namespaces[s % a.namespaces]
            job = "job-%04d" % (s // a.namespaces)
            body = {"apiVersion": "snapcrypt.dev/v1alpha1", "kind": "Snapshot",
                    "metadata": {"name": "bench-%d" % s},
                    "spec": {"backupJobRef": {"name": job}}}
            t0 = time.monotonic()
            created = json.loads(api.call(
                "POST", "/apis/snapcrypt.dev/v1alpha1/namespaces/%s/snapshots" % ns, body))
            uid = created["metadata"]["uid"]
            deadline = time.monotonic() + 60
            while uid not in seen and time.monotonic() < deadline:
                time.sleep(0.005)
            if uid not in seen:
                sys.exit("bench: no pod for Snapshot %s/bench-%d within 60 s" % (ns, s))
            latencies.append(seen[uid] - t0)
        stop.set()
        hwm, rss_now = rss(operator.pid)
    finally:
        if operator:
            operator.terminate()
            operator.wait()
        api.stop()
        for ns in namespaces:
            kubectl("delete", "namespace", ns, "--wait=false", check=False)
        kubectl("delete", "node", NODE, "--wait=false", check=False)

    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    rows = sorted(resting.items(), key=lambda kv: -kv[1])
    req_total = sum(resting.values())
    lines = [
        "## Operator at scale",
        "",
        "`bench/operator_scale.py --jobs %d --namespaces %d --samples %d --rest %d` on %s, "
        "%d cores, against the test cluster's kube-apiserver v1.20 (no kubelet: pods stay "
        "Pending on a registered fake Node), release build." % (
            total, a.namespaces, a.samples, a.rest, time.strftime("%Y-%m-%d"), os.cpu_count()),
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        "| BackupJobs, namespaces | %d, %d | 1000, 20 |" % (total, a.namespaces),
        "| all reconciled once after start, s | %.1f | |" % converge,
        "| operator peak RSS (VmHWM), after the %d Snapshots | %s | <= 64 MiB |" % (a.samples, hwm),
        "| operator RSS at rest (VmRSS) | %s | |" % rss_rest,
        "| Snapshot created -> its pod created, p50 / p99, s | %.3f / %.3f | p99 < 1 |" % (p50, p99),
        "| API requests per minute at rest, all clients | %.1f | no polling storms |" % req_total,
        "",
        "Requests per minute at rest by resource and verb (the cluster's own controllers "
        "included):",
        "",
        "| resource | verb | per minute |",
        "|---|---|---|",
    ] + ["| %s | %s | %.1f |" % (r or "-", v, n) for (r, v), n in rows] + [""]
    text = "\n".join(lines)
    print(text)
    if not a.no_write:
        path = os.path.join(ROOT, "bench/RESULTS.md")
        old = open(path).read()
        if "## Operator at scale" in old:
            head, _, rest = old.partition("## Operator at scale")
            nxt = rest.find("\n## ")
            old = head + (rest[nxt + 1:] if nxt >= 0 else "")
        with open(path, "w") as f:
            f.write(old.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
