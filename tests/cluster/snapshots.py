"""The CSI snapshot half of the storage provisioner double (provisioner.py, which see).

Plays the external-snapshotter and the snapshot support of a CSI driver `snapcrypt.test/local`
for the double's volumes: a VolumeSnapshot is a `cp -a` copy of its claim's volume directory
in ROOT/.snapshots/<snapshot uid>, its VolumeSnapshotContent names that copy as the snapshot
handle, and a claim with that VolumeSnapshot as dataSource gets a volume filled from the copy.
Standard library only: volumesnapshot-crds.yaml is read with the small YAML subset reader below.
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import time

DRIVER = "snapcrypt.test/local"
ROOT = "/var/lib/snapcrypt-volumes"
COPIES = os.path.join(ROOT, ".snapshots")
CLASS = "snapcrypt-snapshots"
FAIL = "snapcrypt.test/fail"  # a VolumeSnapshotClass parameter or a VolumeSnapshot annotation
DEFAULT = "snapshot.storage.kubernetes.io/is-default-class"
GROUP = "snapshot.storage.k8s.io"
API = "/apis/%s/v1" % GROUP
CRDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "volumesnapshot-crds.yaml")
MERGE = "application/merge-patch+json"


def load_yaml(text):
    """The documents of a YAML text written in the subset volumesnapshot-crds.yaml keeps to."""
    docs = []
    for doc in re.split(r"(?m)^---[ \t]*$", text):
        lines = [(len(s) - len(s.lstrip(" ")), s.strip()) for s in doc.splitlines()
                 if s.strip() and not s.lstrip().startswith("#")]
        if lines:
            value, end = _node(lines, 0, lines[0][0])
            if end != len(lines):
                raise ValueError("YAML: unexpected %r" % lines[end][1])
            docs.append(value)
    return docs


KEY = re.compile(r"([A-Za-z0-9_./-]+):(?:\s+(.*))?$")


def _node(lines, i, indent):
    """The block node (a list or a mapping) whose lines start at lines[i], at indent."""
    if lines[i][1].startswith("- "):
        out = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            rest = lines[i][1][2:].lstrip()
            if KEY.match(rest):  # a mapping that starts on the dash's line
                lines[i] = (indent + len(lines[i][1]) - len(rest), rest)
                value, i = _node(lines, i, lines[i][0])
            else:
                value, i = _scalar(rest), i + 1
            out.append(value)
        return out, i
    out = {}
    while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
        m = KEY.match(lines[i][1])
        if not m:
            raise ValueError("YAML: not a key: %r" % lines[i][1])
        i += 1
        if m.group(2):
            out[m.group(1)] = _scalar(m.group(2))
        elif i < len(lines) and (lines[i][0] > indent or lines[i][1].startswith("- ")):
            out[m.group(1)], i = _node(lines, i, lines[i][0])
        else:
            out[m.group(1)] = None
    return out, i


def _scalar(s):
    if s == "{}":
        return {}
    if s.startswith("[") and s.endswith("]"):
        return [_scalar(p.strip()) for p in s[1:-1].split(",") if p.strip()]
    if s.startswith('"'):
        return json.loads(s)
    if s.startswith("'"):
        return s[1:-1].replace("''", "'")
    if s in ("true", "false"):
        return s == "true"
    if s in ("null", "~"):
        return None
    return int(s) if re.fullmatch(r"-?[0-9]+", s) else s


UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def size_bytes(quantity):
    """The bytes of a storage quantity such as 1Gi, 500M or 1e9 (0 if unreadable)."""
    m = re.fullmatch(r"([0-9.]+(?:[eE][0-9]+)?)([kMGTPE]i?)?", str(quantity or "").strip())
    return int(float(m.group(1)) * UNITS[m.group(2) or ""]) if m else 0


def copy_tree(src, dest):
    """dest becomes a copy of the directory src with cp -a (owners, modes, times, links)."""
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    r = subprocess.run(["cp", "-a", "--", src, tmp], capture_output=True, text=True)
    if r.returncode:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError("cp -a %s: %s" % (src, r.stderr.strip()))
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)


def rfc3339(ns=None):
    t = datetime.datetime.fromtimestamp((ns or time.time_ns()) // 10**9, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Snapshots:
    """The snapshot API as seen in one loop of the provisioner (observe), and what it does."""

    def __init__(self, api):
        self.api = api
        self.snaps = self.contents = None  # this loop's lists; None: the CRDs are absent
        self.absent_until = 0.0
        self.said = set()

    def install(self):
        """The CRDs (409: already there) once Established, and the VolumeSnapshotClass."""
        with open(CRDS) as f:
            crds = load_yaml(f.read())
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        for crd in crds:
            self.api.call("POST", path, crd, ok=(201, 409))
        deadline = time.monotonic() + 30
        for crd in crds:
            while not any(c["type"] == "Established" and c["status"] == "True" for c in
                          (self.api.call("GET", path + "/" + crd["metadata"]["name"])
                           .get("status") or {}).get("conditions") or []):
                if time.monotonic() > deadline:
                    raise RuntimeError("CRD %s not Established" % crd["metadata"]["name"])
                time.sleep(0.1)
        self.api.call("POST", API + "/volumesnapshotclasses", {
            "apiVersion": GROUP + "/v1", "kind": "VolumeSnapshotClass",
            "metadata": {"name": CLASS, "annotations": {DEFAULT: "true"}},
            "driver": DRIVER, "deletionPolicy": "Delete"}, ok=(201, 409))

    def observe(self):
        """This loop's VolumeSnapshots and VolumeSnapshotContents: one list call each, none
        for a while once the API was found absent (the CRDs deleted)."""
        self.snaps = self.contents = None
        if time.monotonic() < self.absent_until:
            return
        snaps = self.api.call("GET", API + "/volumesnapshots", ok=(200, 404))
        contents = snaps and self.api.call("GET", API + "/volumesnapshotcontents", ok=(200, 404))
        if snaps is None or contents is None:
            self.absent_until = time.monotonic() + 5
            return
        self.snaps, self.contents = snaps["items"], contents["items"]

    def say(self, key, msg):
        if (key, msg) not in self.said:
            self.said.add((key, msg))
            print(msg, flush=True)

    # -- restoring: a claim with a VolumeSnapshot as dataSource --------------------------

    def source(self, pvc):
        """(ready, copy): whether the claim's volume can be made now and the snapshot copy to
        fill it from (None: no dataSource, an empty volume). Says why a claim waits."""
        meta, spec = pvc["metadata"], pvc.get("spec") or {}
        ds = spec.get("dataSource")
        if not ds:
            return True, None
        ns, claim = meta["namespace"], meta["name"]
        why = None
        vs = next((v for v in self.snaps or [] if v["metadata"]["namespace"] == ns
                   and v["metadata"]["name"] == ds.get("name")), None)
        st = (vs or {}).get("status") or {}
        content = next((c for c in self.contents or [] if c["metadata"]["name"]
                        == st.get("boundVolumeSnapshotContentName")), None)
        copy = ((content or {}).get("status") or {}).get("snapshotHandle")
        if ds.get("kind") != "VolumeSnapshot" or ds.get("apiGroup") != GROUP:
            why = "its dataSource %s %s is not supported" % (ds.get("kind"), ds.get("name"))
        elif self.snaps is None:
            why = "the snapshot API is absent"
        elif vs is None:
            why = "VolumeSnapshot %s does not exist" % ds["name"]
        elif st.get("error"):
            why = "VolumeSnapshot %s failed: %s" % (ds["name"], st["error"].get("message"))
        elif not st.get("readyToUse") or not content:
            why = "VolumeSnapshot %s is not ready" % ds["name"]
        elif content["spec"].get("driver") != DRIVER or not copy or not os.path.isdir(copy):
            why = "VolumeSnapshot %s is not one of this driver's copies" % ds["name"]
        elif size_bytes(spec["resources"]["requests"]["storage"]) < content["status"].get(
                "restoreSize", 0):
            why = "it requests %s, less than the restoreSize of VolumeSnapshot %s (%s)" % (
                spec["resources"]["requests"]["storage"], ds["name"], st.get("restoreSize"))
        if why:
            self.say(meta["uid"], "claim %s/%s stays pending: %s" % (ns, claim, why))
            return False, None
        return True, copy

    # -- taking and deleting snapshots ------------------------------------------------

    def sync(self, pvs, pvcs):
        """Deletes the contents (and copies) of deleted VolumeSnapshots, then takes the new
        ones. Lists the VolumeSnapshotClasses only when a VolumeSnapshot needs one."""
        if self.snaps is None:
            return
        uids = {v["metadata"]["uid"] for v in self.snaps}
        for c in self.contents:
            self.attempt(self.release, c, uids)
        handles = {(c.get("status") or {}).get("snapshotHandle") for c in self.contents}
        for d in os.listdir(COPIES) if os.path.isdir(COPIES) else []:
            if os.path.join(COPIES, d) not in handles:  # no content: a content deleted
                shutil.rmtree(os.path.join(COPIES, d), ignore_errors=True)  # by hand, or a crash
        new = [v for v in self.snaps if not v["metadata"].get("deletionTimestamp")
               and not (v.get("status") or {}).get("boundVolumeSnapshotContentName")
               and not (v.get("status") or {}).get("error")
               and ((v.get("spec") or {}).get("source") or {}).get("persistentVolumeClaimName")]
        if not new:
            return
        classes = self.api.call("GET", API + "/volumesnapshotclasses")["items"]
        pvs = {p["metadata"]["name"]: p for p in pvs}
        pvcs = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pvcs}
        for vs in new:
            self.attempt(self.take, vs, classes, pvs, pvcs)

    def attempt(self, fn, *args):
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - one object's trouble does not stop the rest
            print("snapshots: %s" % e, flush=True)

    def release(self, content, uids):
        spec = content.get("spec") or {}
        ref = spec.get("volumeSnapshotRef") or {}
        if spec.get("driver") != DRIVER or not ref.get("uid") or ref["uid"] in uids:
            return  # not ours, never bound (a pre-provisioned content) or still bound
        if spec.get("deletionPolicy") != "Delete":
            return
        copy = (content.get("status") or {}).get("snapshotHandle") or ""
        if os.path.dirname(os.path.normpath(copy)) == COPIES:
            shutil.rmtree(copy, ignore_errors=True)
        name = content["metadata"]["name"]
        self.api.call("DELETE", API + "/volumesnapshotcontents/" + name, ok=(200, 202, 404))
        print("deleted %s and its copy (VolumeSnapshot %s/%s deleted)"
              % (name, ref.get("namespace"), ref.get("name")), flush=True)

    def take(self, vs, classes, pvs, pvcs):
        meta, spec = vs["metadata"], vs["spec"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        path = API + "/namespaces/%s/volumesnapshots/%s" % (ns, name)
        cls_name = spec.get("volumeSnapshotClassName")
        if cls_name is None:  # the default class of the driver, as the snapshot controller does
            defaults = [c for c in classes if c.get("driver") == DRIVER and
                        (c["metadata"].get("annotations") or {}).get(DEFAULT) == "true"]
            if len(defaults) != 1:
                return
            cls_name = defaults[0]["metadata"]["name"]
            self.api.call("PATCH", path, {"spec": {"volumeSnapshotClassName": cls_name}},
                          ctype=MERGE)
        cls = next((c for c in classes if c["metadata"]["name"] == cls_name), None)
        if not cls or cls.get("driver") != DRIVER:
            return  # another driver's (or a class not made yet)
        fail = (meta.get("annotations") or {}).get(FAIL) or (cls.get("parameters") or {}).get(FAIL)
        if fail:
            self.api.call("PATCH", path + "/status", {"status": {
                "error": {"message": fail, "time": rfc3339()}, "readyToUse": False}}, ctype=MERGE)
            print("VolumeSnapshot %s/%s failed as told: %s" % (ns, name, fail), flush=True)
            return
        pvc = pvcs.get((ns, spec["source"]["persistentVolumeClaimName"]))
        pv = pvs.get(((pvc or {}).get("spec") or {}).get("volumeName"))
        volume = ((pv or {}).get("spec") or {}).get("hostPath", {}).get("path", "")
        if not pv or (pv["metadata"].get("annotations") or {}).get(
                "pv.kubernetes.io/provisioned-by") != DRIVER or not os.path.isdir(volume):
            return  # the claim is not bound yet (or not to one of our volumes)
        copy = os.path.join(COPIES, uid)
        os.makedirs(COPIES, mode=0o700, exist_ok=True)
        instant = time.time_ns()
        copy_tree(volume, copy)
        size = pv["spec"]["capacity"]["storage"]
        content = "snapcontent-" + uid
        self.api.call("POST", API + "/volumesnapshotcontents", {
            "apiVersion": GROUP + "/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": content},
            "spec": {"deletionPolicy": cls["deletionPolicy"], "driver": DRIVER,
                     "source": {"volumeHandle": pv["metadata"]["name"]},
                     "volumeSnapshotClassName": cls_name,
                     "volumeSnapshotRef": {"apiVersion": GROUP + "/v1", "kind": "VolumeSnapshot",
                                           "namespace": ns, "name": name, "uid": uid,
                                           "resourceVersion": meta["resourceVersion"]}}},
            ok=(201, 409))
        self.api.call("PATCH", API + "/volumesnapshotcontents/%s/status" % content, {"status": {
            "snapshotHandle": copy, "creationTime": instant, "readyToUse": True,
            "restoreSize": size_bytes(size)}}, ctype=MERGE)
        self.api.call("PATCH", path + "/status", {"status": {
            "boundVolumeSnapshotContentName": content, "creationTime": rfc3339(instant),
            "readyToUse": True, "restoreSize": size, "error": None}}, ctype=MERGE)
        print("snapshot %s/%s of %s: %s at %s" % (ns, name, pv["metadata"]["name"], content, copy),
              flush=True)
