"""Storage provisioner double for the test cluster's real nodes (started by node.sh start).

A CSI driver cannot run here, so this stands in for one, as local-path-provisioner does in
kind: PersistentVolumeClaims of its two StorageClasses get hostPath PersistentVolumes under
/var/lib/snapcrypt-volumes/<namespace>/<claim>-<uid8> (mode 0777, as local-path does).

  snapcrypt-local   the default class; WaitForFirstConsumer: the scheduler picks the node of
                    the pod that first uses the claim, and the volume gets node affinity to it
                    (a member's disk: later pods that mount it land on that node).
  snapcrypt-shared  Immediate; no node affinity (network storage every node reaches, such as
                    a repository volume that a snapshot pod and a restore pod on different
                    nodes both mount).

Released volumes (their claim deleted) are deleted with their directory.

Snapshots (snapshots.py), as the external-snapshotter and a CSI driver's snapshot support would
make them: at start the snapshot.storage.k8s.io/v1 CRDs (volumesnapshot-crds.yaml) and the
VolumeSnapshotClass `snapcrypt-snapshots` (driver snapcrypt.test/local, deletionPolicy Delete,
the default class).
  VolumeSnapshot    of a claim bound to one of these volumes, with a class of that driver:
                    a `cp -a` copy of the volume's directory at that instant, in
                    /var/lib/snapcrypt-volumes/.snapshots/<snapshot uid>; a
                    VolumeSnapshotContent snapcontent-<snapshot uid> whose snapshotHandle is
                    that directory; both statuses readyToUse with the volume's size as
                    restoreSize. Deleted: its content and copy go (deletionPolicy Delete).
  failing one       the class's parameter or the snapshot's annotation `snapcrypt.test/fail`
                    (a message) makes status.error that message, readyToUse false, no copy;
                    final, as any error here (no retry).
  restoring         a claim whose dataSource is a VolumeSnapshot (apiGroup
                    snapshot.storage.k8s.io) gets a volume that is a copy of the snapshot's
                    copy, once the snapshot is readyToUse; until then (or if it failed, or
                    the claim requests less than its restoreSize) the claim stays pending and
                    the log says why. Other dataSources are not supported (pending too).
Not supported: pre-provisioned snapshots (source.volumeSnapshotContentName), finalizers.

Polls the API server (every 0.3 s, one keep-alive connection) rather than watching: a test
double, kept small, standard library only. The snapshot lists are skipped for 5 s at a time
while the CRDs are absent (deleted by a test); the classes are listed only when a
VolumeSnapshot waits for its copy.

  python3 provisioner.py APISERVER_URL PKI_DIR   (the admin client certificate in PKI_DIR)
"""

import http.client
import json
import os
import shutil
import ssl
import sys
import time
import urllib.parse

import snapshots

PROVISIONER = "snapcrypt.test/local"
CLASSES = {"snapcrypt-local": True, "snapcrypt-shared": False}  # class -> node affinity
ROOT = "/var/lib/snapcrypt-volumes"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
ASKED = "volume.beta.kubernetes.io/storage-provisioner"


class Api:
    """The API server with the cluster's admin client certificate (standard library only)."""

    def __init__(self, url, pki):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
        self.conn = None

    def call(self, method, path, body=None, ok=(200, 201), ctype="application/json"):
        """The decoded answer; None for a 404 that ok allows. One kept-alive connection,
        opened again (and the request sent again) when the server has closed it."""
        for retry in (False, True):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                                        timeout=30)
            try:
                self.conn.request(method, path, headers={"Content-Type": ctype},
                                  body=json.dumps(body) if body is not None else None)
                resp = self.conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if retry:
                    raise
        if resp.status not in ok:
            raise RuntimeError("%s %s: %s %s" % (method, path, resp.status, data[:300]))
        if resp.status == 404:
            return None
        return json.loads(data) if data else None


API = None
SNAPSHOTS = None


def items(path):
    return API.call("GET", path)["items"]


def storage_classes():
    for name, local in CLASSES.items():
        sc = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
              "metadata": {"name": name},
              "provisioner": PROVISIONER, "reclaimPolicy": "Delete",
              "volumeBindingMode": "WaitForFirstConsumer" if local else "Immediate"}
        if name == "snapcrypt-local":
            sc["metadata"]["annotations"] = {
                "storageclass.kubernetes.io/is-default-class": "true"}
        API.call("POST", "/apis/storage.k8s.io/v1/storageclasses", sc, ok=(201, 409))


def provision(pvc, existing):
    meta, spec = pvc["metadata"], pvc.get("spec") or {}
    cls = spec.get("storageClassName")
    if cls not in CLASSES or spec.get("volumeName"):
        return
    if (meta.get("annotations") or {}).get(ASKED) != PROVISIONER:
        return  # the PV controller has not asked yet (for the local class: no node chosen)
    name = "pvc-" + meta["uid"]
    if name in existing:
        return
    node = (meta.get("annotations") or {}).get(SELECTED_NODE)
    if CLASSES[cls] and not node:
        return
    ready, copy = SNAPSHOTS.source(pvc)  # a VolumeSnapshot as dataSource: its copy, once ready
    if not ready:
        return
    ns, claim = meta["namespace"], meta["name"]
    path = os.path.join(ROOT, ns, "%s-%s" % (claim, meta["uid"][:8]))
    if copy:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.isdir(path):
            snapshots.copy_tree(copy, path)
    else:
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o777)
    pv = {"apiVersion": "v1", "kind": "PersistentVolume",
          "metadata": {"name": name, "labels": {"snapcrypt.test/provisioned": "true"},
                       "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
          "spec": {"capacity": {"storage": spec["resources"]["requests"]["storage"]},
                   "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                   "persistentVolumeReclaimPolicy": "Delete", "storageClassName": cls,
                   "hostPath": {"path": path, "type": "Directory"},
                   "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                "namespace": ns, "name": claim, "uid": meta["uid"]}}}
    if CLASSES[cls]:
        pv["spec"]["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}
    API.call("POST", "/api/v1/persistentvolumes", pv, ok=(201, 409))
    print("provisioned %s for %s/%s at %s%s%s" % (
        name, ns, claim, path, " on " + node if CLASSES[cls] else "",
        " from " + spec["dataSource"]["name"] if copy else ""), flush=True)


def release(pv):
    meta, spec = pv["metadata"], pv.get("spec") or {}
    if (meta.get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
        return
    if (pv.get("status") or {}).get("phase") != "Released":
        return
    path = (spec.get("hostPath") or {}).get("path", "")
    if os.path.dirname(os.path.dirname(path)) == ROOT:
        shutil.rmtree(path, ignore_errors=True)
        try:
            os.rmdir(os.path.dirname(path))  # the namespace's directory, once empty
        except OSError:
            pass
    API.call("DELETE", "/api/v1/persistentvolumes/" + meta["name"], ok=(200, 202, 404))
    print("deleted %s (released)" % meta["name"], flush=True)


def main():
    global API, SNAPSHOTS
    API = Api(sys.argv[1], sys.argv[2])  # APISERVER_URL, PKI dir
    SNAPSHOTS = snapshots.Snapshots(API)
    storage_classes()
    SNAPSHOTS.install()
    print("provisioner ready", flush=True)
    while True:
        try:
            pvs = items("/api/v1/persistentvolumes")
            pvcs = items("/api/v1/persistentvolumeclaims")
            SNAPSHOTS.observe()
            existing = {p["metadata"]["name"] for p in pvs}
            for pvc in pvcs:
                provision(pvc, existing)
            for pv in pvs:
                release(pv)
            SNAPSHOTS.sync(pvs, pvcs)
        except Exception as e:  # noqa: BLE001 - a double keeps going; the log says why
            print("provisioner: %s" % e, file=sys.stderr, flush=True)
        time.sleep(0.3)  # pacing only


if __name__ == "__main__":
    main()
