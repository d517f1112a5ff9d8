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

Released volumes (their claim deleted) are deleted with their directory. Polls the API
server (every 0.3 s) rather than watching: a test double, kept small, standard library only.

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

    def call(self, method, path, body=None, ok=(200, 201)):
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=30)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status not in ok:
            raise RuntimeError("%s %s: %s %s" % (method, path, resp.status, data[:300]))
        return json.loads(data) if data else None


API = None


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
    ns, claim = meta["namespace"], meta["name"]
    path = os.path.join(ROOT, ns, "%s-%s" % (claim, meta["uid"][:8]))
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
    print("provisioned %s for %s/%s at %s%s" % (name, ns, claim, path,
                                                " on " + node if CLASSES[cls] else ""), flush=True)


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
    global API
    API = Api(sys.argv[1], sys.argv[2])  # APISERVER_URL, PKI dir
    storage_classes()
    print("provisioner ready", flush=True)
    while True:
        try:
            pvs = items("/api/v1/persistentvolumes")
            existing = {p["metadata"]["name"] for p in pvs}
            for pvc in items("/api/v1/persistentvolumeclaims"):
                provision(pvc, existing)
            for pv in pvs:
                release(pv)
        except Exception as e:  # noqa: BLE001 - a double keeps going; the log says why
            print("provisioner: %s" % e, file=sys.stderr, flush=True)
        time.sleep(0.3)  # pacing only


if __name__ == "__main__":
    main()
