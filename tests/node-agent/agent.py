#!/usr/bin/env python3
"""snapcrypt e2e TEST NODE AGENT -- a TEST DOUBLE of a kubelet (and of the scheduler's bind step).

This is NOT a kubelet and runs no containers. It lets the snapcrypt end-to-end tests run against a
bare kube-apiserver + kube-controller-manager (tests/cluster/start.sh), where nothing else would
ever run a pod. On a real cluster (kind, k3d, cloud) real kubelets run real images and this agent
is not used at all; see tests/README.md.

What it does, as a kubelet would, against the API server:
  * registers Node objects (--node NAME, repeatable) with a Ready condition, InternalIP 127.0.0.1
    and the labels kubernetes.io/hostname=NAME, kubernetes.io/os, kubernetes.io/arch, and
    heartbeats their Ready condition;
  * binds Pending pods without spec.nodeName to one of its nodes by creating a Binding when the
    pod's nodeSelector and required node affinity match that node (e.g. nodeSelector
    kubernetes.io/hostname=node-a) -- the scheduler's job; with --no-schedule-unpinned only pods
    that name one of its nodes through kubernetes.io/hostname (or metadata.name) are bound;
  * "runs" the pods bound to its nodes:
      - containers whose image contains --snapcrypt-image-substring (default "snapcrypt") become
        LOCAL PROCESSES: command[0] with basename "snapcrypt" (or no command: the image's
        entrypoint) is replaced by --snapcrypt-binary, other commands run as they are, with a
        `snapcrypt` symlink to the binary first on PATH;
      - containers whose image contains a --run-image substring (e.g. busybox) run their
        command as it is, as local processes with the same path mapping (to seed volumes the
        same way a test would on a real cluster);
      - every other container (a MongoDB pod is scenery) is only marked Running (init
        containers: Completed), nothing is executed;
  * writes pod status as a kubelet would: Pending (ContainerCreating) -> Running (podIP
    127.0.0.1, containerStatuses running, Ready) -> Succeeded/Failed with exit codes and the
    termination message (file at terminationMessagePath; with FallbackToLogsOnError the log tail
    when the file is empty and the container failed); restartPolicy OnFailure/Always restart
    processes (back-off 1 s doubling up to 10 s, not the kubelet's 5 min);
  * plays a WaitForFirstConsumer local-path provisioner: the first pod that uses an unbound PVC
    gets a PV pre-bound to the claim with nodeAffinity on the pod's node (the controller-manager
    binds it); binding respects PV node affinity; Released PVs are deleted (--no-provision: off);
  * kills the processes (SIGTERM to the process group, SIGKILL after the grace period, capped
    by --max-grace-seconds) when a pod is deleted, and completes graceful deletion like a kubelet
    (final DELETE with gracePeriodSeconds=0); kills all children on SIGTERM/SIGINT.

Volumes and paths. Mount paths inside the "container" do not exist on this machine, so each
volume maps to a local directory and the agent tells the process about it twice:
  * env SNAPCRYPT_PATH_MAP = JSON object {"<mountPath>": "<local path>", ...}, including the
    termination message path and, when a token is mounted, the serviceaccount directory;
  * every occurrence of a mount path as a path prefix in command, args, workingDir and env values
    (plain, secretKeyRef, configMapKeyRef, envFrom) is replaced by its local path, longest mount
    path first, in one pass (so replaced text is never replaced again). A mount path only matches
    at a path boundary: "/data" matches "/data", "/data/db", "--dir=/data" but not "/database"
    or "s3://b/data".
  Volume kinds: persistentVolumeClaim -> <state>/pvcs/<namespace>/<claimName>/ (the PVC must
  exist; tests may put "volume" content there), secret/configMap/downwardAPI/projected -> files materialised in a per-pod temp dir
  (items, keys, modes), emptyDir -> per-pod dir, hostPath -> <state>/nodes/<node>/hostpath/<path>
  (never the machine's real path); subPath is honoured.

Credentials. The process gets no KUBERNETES_SERVICE_HOST/PORT (it could not reach a ClusterIP
here). Instead, unless automountServiceAccountToken is false, the agent asks the API server
for a real token of the pod's ServiceAccount (TokenRequest, bound to the pod) and writes a
kubeconfig with that token and the cluster CA; env KUBECONFIG points at it (clients such as
kube-rs Config::infer() and client-go read KUBECONFIG first). The same token, ca.crt and
namespace files are also written in a directory mapped from
/var/run/secrets/kubernetes.io/serviceaccount when no volume is mounted there. RBAC therefore
applies to the process exactly as it would to the pod.

Logs of each container go to <state>/logs/<namespace>_<pod>_<container>.log (appended across
restarts). `kubectl logs` does not work (there is no kubelet API).

Not modelled: probes (Ready as soon as started), resources/limits, security contexts, images,
volume updates after start, ephemeral containers, pod networking (every pod is 127.0.0.1).

Usage:
  python3 tests/node-agent/agent.py --kubeconfig K --state-dir D --snapcrypt-binary B \\
      --node node-a --node node-b
Prints exactly one line on stdout, "node-agent ready", once the nodes are registered and the
pod watch is running; its own log goes to <state>/node-agent.log (and warnings to stderr, all of
it with -v).
"""

import os
import sys


def _use_venv():
    """Re-execute under the venv that tests/cluster/build.sh made, when there is one."""
    cache = os.environ.get("SNAPCRYPT_CACHE") or os.path.expanduser("~/.cache/snapcrypt")
    venv = os.path.join(cache, "venv")
    py = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.prefix) != os.path.realpath(venv) and os.access(py, os.X_OK) \
            and os.environ.get("_SNAPCRYPT_NODE_AGENT_REEXEC") != "1":
        os.environ["_SNAPCRYPT_NODE_AGENT_REEXEC"] = "1"
        os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


_use_venv()

import argparse  # noqa: E402
import base64  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402

try:
    from kubernetes import client as k8s_client, config as k8s_config  # noqa: E402
    from kubernetes.client.rest import ApiException  # noqa: E402
    from kubernetes.watch.watch import iter_resp_lines  # noqa: E402
except ImportError:
    sys.exit("node-agent: Python package 'kubernetes' missing: run tests/cluster/build.sh "
             "(it creates $SNAPCRYPT_CACHE/venv) or pip install -r tests/node-agent/requirements.txt")

log = logging.getLogger("node-agent")

HOST_IP = "127.0.0.1"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_TERMINATION_MESSAGE = 4096        # kubelet: 4096 bytes per container
FALLBACK_LOG_BYTES, FALLBACK_LOG_LINES = 2048, 80  # kubelet: the smaller of the two
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CCE = "CreateContainerConfigError"
HOLDER_ANNOTATION = "snapcrypt.test/node-agent-holder"
PV_LABEL = "snapcrypt.test/node-agent-pv"
SETPRIV = shutil.which("setpriv")  # util-linux; for --pdeathsig


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class NotReady(Exception):
    """A pod/container cannot start yet (missing PVC/secret/...); retried like a kubelet does."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------- API access
class Kube:
    """Thin raw-JSON access to the API server (dicts in, dicts out) on the client's auth."""

    def __init__(self, kubeconfig):
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        cfg.connection_pool_maxsize = 32
        self.cfg = cfg
        self.api = k8s_client.ApiClient(cfg)
        self.server = cfg.host
        self.ca_data = b""
        if cfg.ssl_ca_cert:
            with open(cfg.ssl_ca_cert, "rb") as f:
                self.ca_data = f.read()

    def call(self, method, path, body=None, query=None, content_type="application/json",
             timeout=(10, 30), stream=False):
        resp = self.api.call_api(
            path, method, path_params={}, query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"], _preload_content=False,
            _return_http_data_only=True, _request_timeout=timeout)
        if stream:
            return resp
        data = resp.data
        return json.loads(data) if data else None

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.call("POST", path, body=body, **kw)

    def merge_patch(self, path, body, **kw):
        return self.call("PATCH", path, body=body, content_type="application/merge-patch+json", **kw)

    def delete(self, path, body=None, **kw):
        return self.call("DELETE", path, body=body, **kw)


def q(s):
    return urllib.parse.quote(s, safe="")


# --------------------------------------------------------------------------- path mapping
def make_substituter(path_map):
    """Replace container paths by local paths at path boundaries, longest first, in one pass."""
    keys = sorted((k for k in path_map if k not in ("", "/")), key=len, reverse=True)
    if not keys:
        return lambda s: s
    pat = re.compile(r"(?<![\w.\-/])(" + "|".join(re.escape(k) for k in keys) + r")(?=/|$|[^\w.\-])")
    return lambda s: pat.sub(lambda m: path_map[m.group(1)], s) if isinstance(s, str) else s


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand_vars(s, env):
    """Kubernetes $(VAR) expansion: defined vars expand, $$ escapes, unknown refs stay."""
    def rep(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)
    return _VAR_REF.sub(rep, s)


# --------------------------------------------------------------------------- scheduling
def match_expression(expr, labels):
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
    has, val = key in labels, labels.get(key)
    if op == "In":
        return has and val in values
    if op == "NotIn":
        return not has or val not in values
    if op == "Exists":
        return has
    if op == "DoesNotExist":
        return not has
    if op in ("Gt", "Lt") and has and values:
        try:
            a, b = int(val), int(values[0])
        except ValueError:
            return False
        return a > b if op == "Gt" else a < b
    return False


def terms_match(terms, node_name, labels):
    """NodeSelectorTerms: ORed terms of ANDed expressions; no terms matches every node."""
    if not terms:
        return True
    fields = {"metadata.name": node_name}
    for t in terms:
        exprs, fexprs = t.get("matchExpressions") or [], t.get("matchFields") or []
        if not exprs and not fexprs:
            continue
        if all(match_expression(e, labels) for e in exprs) and \
                all(match_expression(e, fields) for e in fexprs):
            return True
    return False


def node_fits(pod, node_name, labels):
    spec = pod.get("spec") or {}
    for k, v in (spec.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    req = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
           .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    return terms_match(req.get("nodeSelectorTerms"), node_name, labels)


def names_node(pod, node_name):
    """Whether the pod pins itself to node_name by hostname label or metadata.name."""
    spec = pod.get("spec") or {}
    if (spec.get("nodeSelector") or {}).get("kubernetes.io/hostname") == node_name:
        return True
    req = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
           .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for t in req.get("nodeSelectorTerms") or []:
        for e in (t.get("matchExpressions") or []) + (t.get("matchFields") or []):
            if e.get("key") in ("kubernetes.io/hostname", "metadata.name") and \
                    e.get("operator") == "In" and node_name in (e.get("values") or []):
                return True
    return False


# --------------------------------------------------------------------------- one container
class Container:
    def __init__(self, spec, is_init, runnable):
        self.spec = spec
        self.name = spec["name"]
        self.is_init = is_init
        self.runnable = runnable          # snapcrypt image -> local process; else scenery
        self.proc = None
        self.log_offset = 0
        self.started_at = None
        self.restart_count = 0
        self.backoff = 0.0
        self.next_start = 0.0
        self.done = False                 # terminated and will not run again
        self.started_once = False
        self.tlocal = None
        self.exit_code = None
        self.state = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state = {}
        self.container_id = ""

    def status(self):
        image = self.spec.get("image", "")
        running = "running" in self.state
        st = {
            "name": self.name,
            "image": image,
            "imageID": "snapcrypt-node-agent://" + image,
            "ready": running,
            "started": running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            st["containerID"] = self.container_id
        return st


# --------------------------------------------------------------------------- one pod
class PodWorker(threading.Thread):
    def __init__(self, agent, pod, recovered=False):
        meta = pod["metadata"]
        super().__init__(name="pod-%s/%s" % (meta["namespace"], meta["name"]), daemon=True)
        self.agent = agent
        self.pod = pod
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.spec = pod["spec"]
        self.node = self.spec["nodeName"]
        self.recovered = recovered
        self.stop_evt = threading.Event()
        self.lock = threading.RLock()  # guards the Container.proc fields (worker vs. deletion)
        self.dir = os.path.join(agent.state_dir, "pods", "%s_%s_%s" % (self.ns, self.name, self.uid[:8]))
        self.restart_policy = self.spec.get("restartPolicy", "Always")
        self.inits = [Container(c, True, agent.runnable(c)) for c in self.spec.get("initContainers") or []]
        self.mains = [Container(c, False, agent.runnable(c)) for c in self.spec.get("containers") or []]
        self.phase = "Pending"
        self.reason = None
        self.message = None
        self.start_time = now_rfc3339()
        self.cond_times = {}
        self.path_map = {}
        self.volume_dirs = {}
        self.sa_kubeconfig = None
        self.sa_dir = None
        self.gone = False
        self._last_published = None

    # ---------------------------------------------------------------- status
    def _cond(self, ctype, status, reason=None):
        prev = self.cond_times.get(ctype)
        if not prev or prev[0] != status:
            self.cond_times[ctype] = (status, now_rfc3339())
        c = {"type": ctype, "status": status, "lastProbeTime": None,
             "lastTransitionTime": self.cond_times[ctype][1]}
        if reason:
            c["reason"] = reason
        return c

    def publish(self):
        terminal = self.phase in ("Succeeded", "Failed")
        inited = all(c.done and c.exit_code == 0 for c in self.inits)
        ready = (not terminal) and inited and self.phase == "Running" and \
            all("running" in c.state for c in self.mains)
        r = "PodCompleted" if terminal else None
        conds = [
            self._cond("Initialized", "True" if inited else "False",
                       r if terminal else (None if inited else "ContainersNotInitialized")),
            self._cond("Ready", "True" if ready else "False", r or (None if ready else "ContainersNotReady")),
            self._cond("ContainersReady", "True" if ready else "False",
                       r or (None if ready else "ContainersNotReady")),
            self._cond("PodScheduled", "True"),
        ]
        status = {
            "phase": self.phase,
            "conditions": conds,
            "hostIP": HOST_IP,
            "podIP": HOST_IP,
            "podIPs": [{"ip": HOST_IP}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.mains],
            "reason": self.reason,
            "message": self.message,
        }
        if self.inits:
            status["initContainerStatuses"] = [c.status() for c in self.inits]
        key = json.dumps(status, sort_keys=True)
        if key == self._last_published:
            return
        body = {"metadata": {"uid": self.uid}, "status": status}
        try:
            self.agent.kube.merge_patch("/api/v1/namespaces/%s/pods/%s/status" % (q(self.ns), q(self.name)), body)
            self._last_published = key
            log.info("pod %s/%s: %s %s", self.ns, self.name, self.phase,
                     " ".join("%s=%s" % (c.name, next(iter(c.state))) for c in self.inits + self.mains))
        except ApiException as e:
            if e.status in (404, 409, 422) and self.stop_evt.is_set():
                return
            if e.status == 404:
                self.gone = True
                self.stop_evt.set()
                return
            log.warning("pod %s/%s: status update failed: %s %s", self.ns, self.name, e.status, e.body)
        except Exception as e:  # noqa: BLE001 -- keep the pod worker alive; retried next publish
            log.warning("pod %s/%s: status update failed: %s", self.ns, self.name, e)

    # ---------------------------------------------------------------- volumes
    def _get(self, path, what):
        try:
            return self.agent.kube.get(path)
        except ApiException as e:
            if e.status == 404:
                return None
            raise NotReady("ContainerCreating", "%s: %s %s" % (what, e.status, e.reason))

    def _secret(self, name, optional=False, reason="ContainerCreating"):
        s = self._get("/api/v1/namespaces/%s/secrets/%s" % (q(self.ns), q(name)), "secret " + name)
        if s is None and not optional:
            raise NotReady(reason, 'secret "%s" not found' % name)
        return {k: base64.b64decode(v) for k, v in ((s or {}).get("data") or {}).items()}

    def _configmap(self, name, optional=False, reason="ContainerCreating"):
        c = self._get("/api/v1/namespaces/%s/configmaps/%s" % (q(self.ns), q(name)), "configmap " + name)
        if c is None and not optional:
            raise NotReady(reason, 'configmap "%s" not found' % name)
        out = {k: v.encode() for k, v in ((c or {}).get("data") or {}).items()}
        out.update({k: base64.b64decode(v) for k, v in ((c or {}).get("binaryData") or {}).items()})
        return out

    @staticmethod
    def _write_file(base, rel, data, mode):
        rel = os.path.normpath(rel)
        if rel.startswith("..") or os.path.isabs(rel):
            raise NotReady("ContainerCreating", "invalid volume item path %r" % rel)
        p = os.path.join(base, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode & 0o777)

    def _write_keys(self, base, data, items, default_mode, optional, what):
        if items:
            for it in items:
                if it["key"] not in data:
                    if optional:
                        continue
                    raise NotReady("ContainerCreating", "%s has no key %r" % (what, it["key"]))
                self._write_file(base, it["path"], data[it["key"]], it.get("mode", default_mode))
        else:
            for k, v in data.items():
                self._write_file(base, k, v, default_mode)

    def field_value(self, path):
        meta = self.pod["metadata"]
        m = re.match(r"metadata\.(labels|annotations)\['(.*)'\]$", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        simple = {
            "metadata.name": self.name, "metadata.namespace": self.ns, "metadata.uid": self.uid,
            "spec.nodeName": self.node, "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            "status.hostIP": HOST_IP, "status.podIP": HOST_IP, "status.podIPs": HOST_IP,
        }
        if path in simple:
            return simple[path]
        if path in ("metadata.labels", "metadata.annotations"):
            d = meta.get(path.split(".")[1]) or {}
            return "\n".join('%s="%s"' % (k, v) for k, v in sorted(d.items()))
        return ""

    def _downward(self, base, items, default_mode):
        for it in items or []:
            if "fieldRef" in it:
                val = self.field_value(it["fieldRef"]["fieldPath"])
            else:
                val = "0"  # resourceFieldRef: resources are not modelled
            self._write_file(base, it["path"], val.encode(), it.get("mode", default_mode))

    def token_request(self, sa, audiences=None, seconds=None):
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": int(seconds or self.agent.args.token_seconds),
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}}}
        if audiences:
            body["spec"]["audiences"] = audiences
        try:
            r = self.agent.kube.post("/api/v1/namespaces/%s/serviceaccounts/%s/token" % (q(self.ns), q(sa)), body)
        except ApiException as e:
            raise NotReady("ContainerCreating", "TokenRequest for serviceaccount %s: %s %s" % (sa, e.status, e.reason))
        return r["status"]["token"]

    def prepare_volumes(self):
        vroot = os.path.join(self.dir, "volumes")
        for v in self.spec.get("volumes") or []:
            name = v["name"]
            mode = 0o644
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                pvc = self._get("/api/v1/namespaces/%s/persistentvolumeclaims/%s" % (q(self.ns), q(claim)),
                                "pvc " + claim)
                if pvc is None:
                    raise NotReady("ContainerCreating", 'persistentvolumeclaim "%s" not found' % claim)
                d = self.agent.pvc_dir(self.ns, claim)
                os.makedirs(d, exist_ok=True)
                if not self.agent.args.no_provision:
                    self.agent.ensure_bound(pvc, self.node)
            elif "hostPath" in v:
                d = os.path.join(self.agent.state_dir, "nodes", self.node, "hostpath",
                                 v["hostPath"]["path"].lstrip("/"))
                os.makedirs(d, exist_ok=True)
            else:
                d = os.path.join(vroot, name)
                shutil.rmtree(d, ignore_errors=True)
                os.makedirs(d)
                if "secret" in v:
                    s = v["secret"]
                    mode = s.get("defaultMode", mode)
                    data = self._secret(s["secretName"], s.get("optional", False))
                    self._write_keys(d, data, s.get("items"), mode, s.get("optional", False), "secret " + s["secretName"])
                elif "configMap" in v:
                    c = v["configMap"]
                    mode = c.get("defaultMode", mode)
                    data = self._configmap(c["name"], c.get("optional", False))
                    self._write_keys(d, data, c.get("items"), mode, c.get("optional", False), "configmap " + c["name"])
                elif "downwardAPI" in v:
                    self._downward(d, v["downwardAPI"].get("items"), v["downwardAPI"].get("defaultMode", mode))
                elif "projected" in v:
                    p = v["projected"]
                    mode = p.get("defaultMode", mode)
                    for src in p.get("sources") or []:
                        if "secret" in src:
                            s = src["secret"]
                            data = self._secret(s["name"], s.get("optional", False))
                            self._write_keys(d, data, s.get("items"), mode, s.get("optional", False), "secret " + s["name"])
                        elif "configMap" in src:
                            c = src["configMap"]
                            data = self._configmap(c["name"], c.get("optional", False))
                            self._write_keys(d, data, c.get("items"), mode, c.get("optional", False), "configmap " + c["name"])
                        elif "downwardAPI" in src:
                            self._downward(d, src["downwardAPI"].get("items"), mode)
                        elif "serviceAccountToken" in src:
                            t = src["serviceAccountToken"]
                            aud = [t["audience"]] if t.get("audience") else None
                            tok = self.token_request(self.spec.get("serviceAccountName") or "default", aud,
                                                     t.get("expirationSeconds"))
                            self._write_file(d, t["path"], tok.encode(), mode)
                elif "emptyDir" not in v:
                    log.warning("pod %s/%s: volume %s of an unsupported kind: an empty dir", self.ns, self.name, name)
            self.volume_dirs[name] = d

    def automount(self):
        a = self.spec.get("automountServiceAccountToken")
        if a is not None:
            return a
        sa = self._get("/api/v1/namespaces/%s/serviceaccounts/%s" % (
            q(self.ns), q(self.spec.get("serviceAccountName") or "default")), "serviceaccount")
        return (sa or {}).get("automountServiceAccountToken", True) is not False

    def prepare_credentials(self):
        if not self.automount():
            return
        sa = self.spec.get("serviceAccountName") or "default"
        token = self.token_request(sa)
        d = os.path.join(self.dir, "serviceaccount")
        os.makedirs(d, exist_ok=True)
        self._write_file(d, "token", token.encode(), 0o600)
        self._write_file(d, "ca.crt", self.agent.kube.ca_data, 0o644)
        self._write_file(d, "namespace", self.ns.encode(), 0o644)
        kc = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": {
                "server": self.agent.kube.server,
                "certificate-authority-data": base64.b64encode(self.agent.kube.ca_data).decode()}}],
            "users": [{"name": "system:serviceaccount:%s:%s" % (self.ns, sa), "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "cluster", "namespace": self.ns,
                                                     "user": "system:serviceaccount:%s:%s" % (self.ns, sa)}}],
            "current-context": "pod",
        }
        self._write_file(d, "kubeconfig", json.dumps(kc, indent=1).encode(), 0o600)
        self.sa_dir = d
        self.sa_kubeconfig = os.path.join(d, "kubeconfig")

    # ---------------------------------------------------------------- processes
    def _container_paths(self, c):
        """mountPath -> local path for one container."""
        cdir = os.path.join(self.dir, "containers", c.name)
        os.makedirs(cdir, exist_ok=True)
        pm = {}
        for m in c.spec.get("volumeMounts") or []:
            base = self.volume_dirs.get(m["name"])
            if base is None:
                raise NotReady("CreateContainerConfigError", "volume %r not found" % m["name"])
            local = base
            if m.get("subPath"):
                local = os.path.join(base, m["subPath"])
                if not os.path.exists(local):
                    os.makedirs(local, exist_ok=True)
            pm[m["mountPath"].rstrip("/") or "/"] = local
        tpath = c.spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        tlocal = os.path.join(cdir, "termination-log")
        pm[tpath] = tlocal
        if self.sa_dir and SA_MOUNT not in pm:
            pm[SA_MOUNT] = self.sa_dir
        return cdir, pm, tlocal

    def _env(self, c, subst):
        env = {}
        for ef in c.spec.get("envFrom") or []:
            prefix = ef.get("prefix", "")
            if "secretRef" in ef:
                data = self._secret(ef["secretRef"]["name"], ef["secretRef"].get("optional", False), CCE)
            elif "configMapRef" in ef:
                data = self._configmap(ef["configMapRef"]["name"], ef["configMapRef"].get("optional", False), CCE)
            else:
                continue
            for k, v in data.items():
                env[prefix + k] = subst(v.decode(errors="replace"))
        for e in c.spec.get("env") or []:
            name = e["name"]
            if "valueFrom" not in e:
                env[name] = expand_vars(subst(e.get("value", "")), env)
                continue
            vf = e["valueFrom"]
            if "secretKeyRef" in vf:
                r = vf["secretKeyRef"]
                data = self._secret(r["name"], r.get("optional", False), CCE)
                if r["key"] not in data:
                    if r.get("optional"):
                        continue
                    raise NotReady("CreateContainerConfigError",
                                   "couldn't find key %s in Secret %s/%s" % (r["key"], self.ns, r["name"]))
                env[name] = subst(data[r["key"]].decode(errors="replace"))
            elif "configMapKeyRef" in vf:
                r = vf["configMapKeyRef"]
                data = self._configmap(r["name"], r.get("optional", False), CCE)
                if r["key"] not in data:
                    if r.get("optional"):
                        continue
                    raise NotReady("CreateContainerConfigError",
                                   "couldn't find key %s in ConfigMap %s/%s" % (r["key"], self.ns, r["name"]))
                env[name] = subst(data[r["key"]].decode(errors="replace"))
            elif "fieldRef" in vf:
                env[name] = self.field_value(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                env[name] = "0"
        return env

    def _argv(self, c, env, subst):
        spec = c.spec
        cmd, args = list(spec.get("command") or []), list(spec.get("args") or [])
        cmd = [expand_vars(subst(a), env) for a in cmd]
        args = [expand_vars(subst(a), env) for a in args]
        if not self.agent.is_snapcrypt(spec):
            # --run-image: the command runs as it is (e.g. busybox sh -c ... seeding a volume)
            if not cmd and not args:
                raise FileNotFoundError(2, "no command: the image's entrypoint is unknown here", spec.get("image"))
            return cmd + args
        binary = self.agent.args.snapcrypt_binary
        entry_names = {"snapcrypt"} | ({os.path.basename(binary)} if binary else set())
        if not cmd or os.path.basename(cmd[0]) in entry_names:
            if not binary:
                raise FileNotFoundError("no --snapcrypt-binary given to the node agent")
            return [binary] + cmd[1:] + args
        return cmd + args

    def start_container(self, c):
        if not c.runnable:
            c.state = {"running": {"startedAt": now_rfc3339()}}
            c.container_id = "snapcrypt-node-agent://scenery-%s-%s" % (self.uid[:8], c.name)
            if c.is_init:
                ts = now_rfc3339()
                c.state = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": ts,
                                          "finishedAt": ts, "containerID": c.container_id}}
                c.exit_code, c.done = 0, True
            return
        cdir, pm, tlocal = self._container_paths(c)
        subst = make_substituter(pm)
        env = self._env(c, subst)
        full_env = {"PATH": os.path.join(self.dir, "bin") + ":" + BASE_PATH, "HOSTNAME": self.name,
                    "HOME": os.path.join(cdir, "home")}
        for k in self.agent.args.pass_env:
            if k in os.environ:
                full_env[k] = os.environ[k]
        full_env.update(env)
        if self.sa_kubeconfig and "KUBECONFIG" not in env:
            full_env["KUBECONFIG"] = self.sa_kubeconfig
        full_env["SNAPCRYPT_PATH_MAP"] = json.dumps(pm, sort_keys=True)
        os.makedirs(full_env["HOME"], exist_ok=True)
        wd = c.spec.get("workingDir")
        cwd = subst(wd) if wd else os.path.join(cdir, "work")
        if wd and cwd == wd:
            cwd = os.path.join(cdir, "work", wd.lstrip("/"))
        os.makedirs(cwd, exist_ok=True)
        with open(tlocal, "wb"):
            pass  # the kubelet gives each run an empty termination message file
        logpath = self.agent.log_path(self.ns, self.name, c.name)
        c.tlocal = tlocal
        c.started_at = now_rfc3339()
        c.started_once = True
        with open(logpath, "ab") as logf:
            c.log_offset = logf.tell()
            try:
                argv = self._argv(c, full_env, subst)
                log.info("pod %s/%s container %s: exec %s", self.ns, self.name, c.name, argv)
                exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=full_env["PATH"])
                if not exe or not os.access(exe, os.X_OK):
                    raise FileNotFoundError(2, "executable file not found", argv[0])
                if SETPRIV:
                    # the process gets SIGKILL if the agent dies without cleaning up (SIGKILL)
                    argv = [SETPRIV, "--pdeathsig", "KILL", "--"] + argv
                c.proc = subprocess.Popen(argv, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL,
                                          stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                # like a runtime that cannot exec the entrypoint: terminated 127, ContainerCannotRun
                logf.write(("node-agent: cannot run container %s: %s\n" % (c.name, e)).encode())
                c.proc = None
                self._terminated(c, 127, "ContainerCannotRun", str(e), tlocal)
                self._after_exit(c)
                return
        self.agent.track(c.proc)
        if self.stop_evt.is_set():  # deleted while we were starting it
            self.agent.kill_procs([c.proc], 0)
        c.container_id = "snapcrypt-node-agent://%d" % c.proc.pid
        c.state = {"running": {"startedAt": c.started_at}}

    def _terminated(self, c, code, reason, message, tlocal):
        if message is None:
            message = ""
            try:
                with open(tlocal, "rb") as f:
                    message = f.read(MAX_TERMINATION_MESSAGE).decode(errors="replace")
            except OSError:
                pass
            if not message and code != 0 and \
                    c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                message = self._log_tail(c)
        term = {"exitCode": code, "reason": reason, "startedAt": c.started_at or now_rfc3339(),
                "finishedAt": now_rfc3339(), "containerID": c.container_id}
        if message:
            term["message"] = message
        c.state = {"terminated": term}
        c.exit_code = code

    def _log_tail(self, c):
        try:
            with open(self.agent.log_path(self.ns, self.name, c.name), "rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                start = max(c.log_offset, end - FALLBACK_LOG_BYTES)
                f.seek(start)
                data = f.read()
        except OSError:
            return ""
        lines = data.decode(errors="replace").splitlines(keepends=True)
        return "".join(lines[-FALLBACK_LOG_LINES:])

    def reap(self, c):
        """Process exited? Record it and decide about a restart. Returns True on a change."""
        with self.lock:
            return self._reap(c)

    def _reap(self, c):
        if c.proc is None:
            return False
        rc = c.proc.poll()
        if rc is None:
            return False
        self.agent.untrack(c.proc)
        c.proc = None
        code = rc if rc >= 0 else 128 - rc
        self._terminated(c, code, "Completed" if code == 0 else "Error", None, c.tlocal)
        log.info("pod %s/%s container %s exited %d", self.ns, self.name, c.name, code)
        self._after_exit(c)
        return True

    def _after_exit(self, c):
        code = c.exit_code
        restart = (self.restart_policy == "Always" and not c.is_init) or \
            (self.restart_policy in ("Always", "OnFailure") and code != 0)
        if restart and not self.stop_evt.is_set():
            c.backoff = min(max(c.backoff * 2, 1.0), 10.0)
            c.next_start = time.monotonic() + c.backoff
            c.last_state = c.state
            c.restart_count += 1
            c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": "back-off %gs restarting failed container=%s pod=%s_%s" % (
                                       c.backoff, c.name, self.name, self.ns)}}
        else:
            c.done = True

    def kill_all(self, grace):
        with self.lock:
            procs = [c.proc for c in self.inits + self.mains if c.proc is not None]
        self.agent.kill_procs(procs, grace)
        for c in self.inits + self.mains:
            self.reap(c)

    def stop(self, grace):
        """Pod deleted: kill the processes within the grace period (capped)."""
        self.stop_evt.set()
        self.kill_all(min(grace, self.agent.args.max_grace_seconds))

    # ---------------------------------------------------------------- main loop
    def try_start(self, c):
        try:
            with self.lock:
                if self.stop_evt.is_set():
                    return False
                self.start_container(c)
            return True
        except NotReady as e:
            # e.g. a missing Secret key: CreateContainerConfigError, retried every second
            c.state = {"waiting": {"reason": e.reason, "message": str(e)}}
            c.next_start = time.monotonic() + 1.0
        return False

    def run(self):
        try:
            self._run()
        except Exception:  # noqa: BLE001
            log.exception("pod %s/%s: worker crashed", self.ns, self.name)
            self.kill_all(0)
            self.phase, self.reason, self.message = "Failed", "NodeAgentError", "test node agent error (see its log)"
            self.publish()
        finally:
            if self.stop_evt.is_set():
                self.kill_all(0)

    def _run(self):
        if self.recovered and self.restart_policy == "Never":
            for c in self.inits + self.mains:
                if c.runnable:
                    c.state = {"terminated": {"exitCode": 137, "reason": "Error", "message": "process lost: the test node agent restarted",
                                              "startedAt": self.start_time, "finishedAt": now_rfc3339()}}
                    c.exit_code, c.done = 137, True
            self.phase, self.reason, self.message = "Failed", "NodeAgentRestarted", "the test node agent restarted while the pod ran"
            self.publish()
            return
        os.makedirs(os.path.join(self.dir, "bin"), exist_ok=True)
        if self.agent.args.snapcrypt_binary:
            link = os.path.join(self.dir, "bin", "snapcrypt")
            if not os.path.lexists(link):
                os.symlink(self.agent.args.snapcrypt_binary, link)
        self.publish()
        # volumes and credentials, retried until they can be had (as the kubelet does)
        while not self.stop_evt.is_set():
            try:
                self.prepare_volumes()
                self.prepare_credentials()
                self.message = self.reason = None
                break
            except NotReady as e:
                for c in self.inits + self.mains:
                    c.state = {"waiting": {"reason": "ContainerCreating"}}
                self.reason, self.message = None, str(e)
                self.publish()
                self.stop_evt.wait(1.0)
        # init containers, one after the other
        for c in self.inits:
            while not self.stop_evt.is_set() and not c.done:
                if c.proc is None and time.monotonic() >= c.next_start:
                    self.try_start(c)
                    self.publish()
                if self.reap(c):
                    self.publish()
                if c.done and c.exit_code != 0:
                    self.phase = "Failed"
                    for m in self.mains:
                        m.state = {"waiting": {"reason": "PodInitializing"}}
                    self.publish()
                    return
                self.stop_evt.wait(0.1)
        for m in self.mains:
            if "waiting" in m.state and not self.stop_evt.is_set():
                m.state = {"waiting": {"reason": "ContainerCreating"}}
        # main containers
        while not self.stop_evt.is_set():
            changed = False
            for c in self.mains:
                if c.proc is None and not c.done and time.monotonic() >= c.next_start \
                        and "running" not in c.state:
                    changed |= self.try_start(c)
                changed |= self.reap(c)
            if self.phase == "Pending" and all(c.started_once or "running" in c.state for c in self.mains):
                self.phase = "Running"
            if self.mains and all(c.done for c in self.mains):
                self.phase = "Succeeded" if all(c.exit_code == 0 for c in self.mains) else "Failed"
                self.publish()
                return
            self.publish()
            # poll processes at 10 Hz; a pod of scenery only just waits for its deletion
            busy = any(c.runnable and not c.done for c in self.mains)
            self.stop_evt.wait(0.1 if busy else 5.0)


# --------------------------------------------------------------------------- the agent
class Agent:
    def __init__(self, args):
        self.args = args
        self.state_dir = os.path.abspath(args.state_dir)
        # the client writes the kubeconfig's cert data to temp files: keep them in the state dir
        # (they would be left in /tmp if the agent were SIGKILLed)
        tempfile.tempdir = os.path.join(self.state_dir, "tmp")
        os.makedirs(tempfile.tempdir, mode=0o700, exist_ok=True)
        self.kube = Kube(args.kubeconfig)
        self.nodes = list(dict.fromkeys(args.node))
        self.node_labels = {}
        self.registered = []
        self.workers = {}
        self.finalizing = set()
        self.pods = {}        # uid -> latest pod dict (for scheduling spread)
        self.lock = threading.Lock()
        self.procs = set()
        self.procs_lock = threading.Lock()
        self.stopping = threading.Event()
        for d in ("logs", "pods", "pvcs"):
            os.makedirs(os.path.join(self.state_dir, d), exist_ok=True)

    def runnable(self, container):
        image = container.get("image", "")
        return self.args.snapcrypt_image_substring in image or \
            any(s in image for s in self.args.run_image)

    def is_snapcrypt(self, container):
        return self.args.snapcrypt_image_substring in container.get("image", "")

    def pvc_dir(self, ns, claim):
        return os.path.join(self.state_dir, "pvcs", ns, claim)

    # ---------------------------------------------------------------- volumes (provisioner double)
    def ensure_bound(self, pvc, node):
        """Like a local-path provisioner with WaitForFirstConsumer (kind, k3d): the first pod
        that uses an unbound PVC gets a PV pre-bound to it, on that pod's node (nodeAffinity),
        backed by <state>/pvcs/<ns>/<claim>; kube-controller-manager's PV binder completes the
        binding. Raises NotReady until the PVC is Bound."""
        meta, spec = pvc["metadata"], pvc.get("spec") or {}
        if (pvc.get("status") or {}).get("phase") == "Bound":
            return
        ns, name = meta["namespace"], meta["name"]
        if not spec.get("volumeName"):
            pv = {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": "pvc-" + meta["uid"],
                             "labels": {PV_LABEL: "true"},
                             "annotations": {"pv.kubernetes.io/provisioned-by": "snapcrypt.test/node-agent"}},
                "spec": {
                    "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": spec.get("storageClassName") or "",
                    "volumeMode": spec.get("volumeMode") or "Filesystem",
                    "hostPath": {"path": self.pvc_dir(ns, name), "type": "DirectoryOrCreate"},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns,
                                 "name": name, "uid": meta["uid"]},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
                },
            }
            try:
                self.kube.post("/api/v1/persistentvolumes", pv)
                log.info("provisioned %s for pvc %s/%s on %s", pv["metadata"]["name"], ns, name, node)
            except ApiException as e:
                if e.status != 409:
                    raise NotReady("ContainerCreating", "provisioning a PV for %s: %s %s" % (name, e.status, e.reason))
        raise NotReady("ContainerCreating", 'waiting for persistentvolumeclaim "%s" to be bound' % name)

    def release_volumes(self):
        """Delete the PVs we provisioned once their claim is gone (Released); the data stays."""
        try:
            lst = self.kube.get("/api/v1/persistentvolumes", query={"labelSelector": PV_LABEL + "=true"})
        except Exception as e:  # noqa: BLE001
            log.warning("listing PVs: %s", e)
            return
        for pv in lst.get("items") or []:
            path = ((pv.get("spec") or {}).get("hostPath") or {}).get("path", "")
            if (pv.get("status") or {}).get("phase") == "Released" and path.startswith(self.state_dir + "/"):
                try:
                    self.kube.delete("/api/v1/persistentvolumes/" + q(pv["metadata"]["name"]))
                    log.info("deleted released %s", pv["metadata"]["name"])
                except ApiException as e:
                    if e.status != 404:
                        log.warning("deleting %s: %s", pv["metadata"]["name"], e.status)

    def volume_terms(self, pod):
        """Node affinity of the PVs bound to the pod's PVCs; None if a PVC is missing."""
        ns = pod["metadata"]["namespace"]
        out = []
        for v in (pod.get("spec") or {}).get("volumes") or []:
            if "persistentVolumeClaim" not in v:
                continue
            try:
                pvc = self.kube.get("/api/v1/namespaces/%s/persistentvolumeclaims/%s" % (
                    q(ns), q(v["persistentVolumeClaim"]["claimName"])))
                vn = (pvc.get("spec") or {}).get("volumeName")
                if vn:
                    pv = self.kube.get("/api/v1/persistentvolumes/" + q(vn))
                    terms = (((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}) \
                        .get("nodeSelectorTerms")
                    if terms:
                        out.append(terms)
            except ApiException as e:
                if e.status == 404:
                    return None  # unschedulable until the PVC (or its PV) exists
                raise
        return out

    def log_path(self, ns, pod, container):
        return os.path.join(self.state_dir, "logs", "%s_%s_%s.log" % (ns, pod, container))

    # ---------------------------------------------------------------- processes
    def track(self, p):
        with self.procs_lock:
            self.procs.add(p)

    def untrack(self, p):
        with self.procs_lock:
            self.procs.discard(p)

    def kill_procs(self, procs, grace):
        procs = [p for p in procs if p.poll() is None]
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        deadline = time.monotonic() + max(grace, 0)
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the rest of the group too
            except OSError:
                pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("process %d survived SIGKILL", p.pid)

    # ---------------------------------------------------------------- nodes
    def node_body(self, name):
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
            "snapcrypt.test/node-agent": "true",
        }
        for kv in self.args.node_label:
            k, _, v = kv.partition("=")
            labels[k] = v
        self.node_labels[name] = labels
        res = {"cpu": "2", "memory": "24Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {"snapcrypt.test/node-agent": "test double of a kubelet",
                                 HOLDER_ANNOTATION: self.holder()}},
            "spec": {},
            "status": {
                "conditions": self.node_conditions(),
                "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": name}],
                "capacity": res, "allocatable": res,
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
                "nodeInfo": {
                    "machineID": "", "systemUUID": "", "bootID": "",
                    "kernelVersion": platform.release(), "osImage": "snapcrypt test node agent",
                    "containerRuntimeVersion": "snapcrypt-node-agent://1", "kubeletVersion": "v1.20.2",
                    "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux", "architecture": "amd64",
                },
            },
        }

    def node_conditions(self):
        t = now_rfc3339()
        if not hasattr(self, "_node_t0"):
            self._node_t0 = t
        c = []
        for ctype, status, reason, msg in (
                ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                ("Ready", "True", "KubeletReady", "snapcrypt test node agent is posting ready status")):
            c.append({"type": ctype, "status": status, "reason": reason, "message": msg,
                      "lastHeartbeatTime": t, "lastTransitionTime": self._node_t0})
        return c

    def holder(self):
        return "%s/%d" % (platform.node(), os.getpid())

    def check_not_held(self, name):
        """Refuse a node that another live agent on this machine is serving: two agents owning
        one node would both run its pods."""
        try:
            node = self.kube.get("/api/v1/nodes/" + q(name))
        except ApiException as e:
            if e.status == 404:
                return
            raise
        holder = ((node.get("metadata") or {}).get("annotations") or {}).get(HOLDER_ANNOTATION, "")
        host, _, pid = holder.rpartition("/")
        if not pid.isdigit() or host != platform.node() or int(pid) == os.getpid():
            return
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                alive = b"agent.py" in f.read()
        except OSError:
            alive = False
        if alive:
            raise SystemExit("node-agent: node %s is served by another running node agent (pid %s); "
                             "use other node names or stop it first" % (name, pid))

    def register_nodes(self, check=True):
        for name in self.nodes:
            if check:
                self.check_not_held(name)
            body = self.node_body(name)
            try:
                self.kube.post("/api/v1/nodes", body)
                log.info("registered node %s", name)
            except ApiException as e:
                if e.status != 409:
                    raise
                self.kube.merge_patch("/api/v1/nodes/" + q(name), {"metadata": {
                    "labels": body["metadata"]["labels"], "annotations": body["metadata"]["annotations"]}})
                log.info("node %s already existed: labels updated", name)
            self.kube.merge_patch("/api/v1/nodes/%s/status" % q(name), {"status": body["status"]})
            if name not in self.registered:
                self.registered.append(name)

    def heartbeat(self):
        while not self.stopping.wait(self.args.heartbeat_seconds):
            if not self.args.no_provision:
                self.release_volumes()
            for name in self.nodes:
                try:
                    self.kube.merge_patch("/api/v1/nodes/%s/status" % q(name),
                                          {"status": {"conditions": self.node_conditions()}})
                except ApiException as e:
                    if e.status == 404:
                        log.warning("node %s was deleted: registering it again", name)
                        try:
                            self.register_nodes(check=False)
                        except Exception as e2:  # noqa: BLE001
                            log.warning("re-register failed: %s", e2)
                    else:
                        log.warning("node %s heartbeat: %s", name, e.status)
                except Exception as e:  # noqa: BLE001
                    log.warning("node %s heartbeat: %s", name, e)

    # ---------------------------------------------------------------- pods
    def schedule(self, pod):
        spec = pod["spec"]
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
            return
        if self.args.no_schedule_unpinned and \
                pod["metadata"]["namespace"] not in self.args.schedule_unpinned_in:
            cands = [n for n in self.nodes if names_node(pod, n)]
        else:
            cands = list(self.nodes)
        cands = [n for n in cands if node_fits(pod, n, self.node_labels.get(n, {}))]
        if not cands:
            return
        vterms = self.volume_terms(pod)
        if vterms is None:
            return
        cands = [n for n in cands if all(terms_match(t, n, self.node_labels.get(n, {})) for t in vterms)]
        if not cands:
            return
        load = {n: 0 for n in cands}
        for p in self.pods.values():
            n = (p.get("spec") or {}).get("nodeName")
            if n in load and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                load[n] += 1
        node = min(cands, key=lambda n: (load[n], cands.index(n)))
        meta = pod["metadata"]
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        try:
            self.kube.post("/api/v1/namespaces/%s/pods/%s/binding" % (q(meta["namespace"]), q(meta["name"])), body)
            log.info("bound pod %s/%s to %s", meta["namespace"], meta["name"], node)
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("binding %s/%s to %s: %s %s", meta["namespace"], meta["name"], node, e.status, e.body)

    def finalize_deletion(self, pod, worker):
        """Graceful deletion of a pod on our node: stop it, then remove it (grace 0), as a kubelet does."""
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        try:
            if worker is not None:
                grace = meta.get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                worker.stop(grace)
                worker.join(timeout=10)
            try:
                self.kube.delete("/api/v1/namespaces/%s/pods/%s" % (q(ns), q(name)),
                                 {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                                  "preconditions": {"uid": uid}})
                log.info("pod %s/%s deleted", ns, name)
            except ApiException as e:
                if e.status not in (404, 409):
                    log.warning("final delete of %s/%s: %s %s", ns, name, e.status, e.body)
        except Exception:  # noqa: BLE001
            log.exception("finalizing deletion of %s/%s", ns, name)

    def forget(self, uid):
        with self.lock:
            w = self.workers.pop(uid, None)
            self.finalizing.discard(uid)
        if w is not None:
            shutil.rmtree(w.dir, ignore_errors=True)
        return w

    def handle(self, etype, pod):
        meta = pod["metadata"]
        uid = meta["uid"]
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        if etype == "DELETED":
            self.pods.pop(uid, None)
            with self.lock:
                w = self.workers.get(uid)
            if w is not None:
                def gone(w=w, uid=uid):
                    w.stop(0)
                    self.forget(uid)
                threading.Thread(target=gone, daemon=True).start()
            return
        self.pods[uid] = pod
        if not node:
            if not meta.get("deletionTimestamp") and (pod.get("status") or {}).get("phase", "Pending") == "Pending":
                self.schedule(pod)
            return
        if node not in self.nodes:
            return
        with self.lock:
            w = self.workers.get(uid)
            finalizing = uid in self.finalizing
        if meta.get("deletionTimestamp"):
            if not finalizing:
                with self.lock:
                    self.finalizing.add(uid)
                threading.Thread(target=self.finalize_deletion, args=(pod, w), daemon=True).start()
            return
        if w is not None:
            return
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if phase in ("Succeeded", "Failed"):
            return
        w = PodWorker(self, pod, recovered=(phase == "Running"))
        with self.lock:
            self.workers[uid] = w
        w.start()

    def retry_unscheduled(self):
        """A scheduler retries pods it could not place (e.g. their PVC did not exist yet)."""
        for pod in list(self.pods.values()):
            if not (pod.get("spec") or {}).get("nodeName") and not pod["metadata"].get("deletionTimestamp") \
                    and (pod.get("status") or {}).get("phase", "Pending") == "Pending":
                try:
                    self.schedule(pod)
                except Exception as e:  # noqa: BLE001
                    log.warning("scheduling %s/%s: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], e)

    def relist(self):
        lst = self.kube.get("/api/v1/pods")
        seen = set()
        for pod in lst.get("items") or []:
            seen.add(pod["metadata"]["uid"])
            self.handle("ADDED", pod)
        for uid in list(self.pods):
            if uid not in seen:
                self.handle("DELETED", self.pods[uid])
        with self.lock:
            stale = [u for u in self.workers if u not in seen]
        for uid in stale:
            w = self.forget(uid)
            if w:
                threading.Thread(target=w.stop, args=(0,), daemon=True).start()
        return lst["metadata"]["resourceVersion"]

    def watch_pods(self, on_ready):
        announced = False
        while not self.stopping.is_set():
            try:
                rv = self.relist()
                if not announced:
                    on_ready()
                    announced = True
                while not self.stopping.is_set():
                    resp = self.kube.call("GET", "/api/v1/pods", query={
                        "watch": "true", "resourceVersion": rv, "timeoutSeconds": "10",
                        "allowWatchBookmarks": "true"}, timeout=(10, 70), stream=True)
                    try:
                        for line in iter_resp_lines(resp):
                            if not line or line.isspace():
                                continue
                            ev = json.loads(line)
                            obj = ev.get("object") or {}
                            if ev["type"] == "ERROR":
                                raise ApiException(status=obj.get("code", 500), reason=obj.get("message"))
                            rv = obj["metadata"]["resourceVersion"]
                            if ev["type"] != "BOOKMARK":
                                self.handle(ev["type"], obj)
                    finally:
                        resp.close()
                        resp.release_conn()
                    self.retry_unscheduled()
            except ApiException as e:
                if e.status != 410:
                    log.warning("pod watch: %s %s: relisting", e.status, e.reason)
                    self.stopping.wait(1.0)
            except Exception as e:  # noqa: BLE001 -- connection trouble: relist after a pause
                if self.stopping.is_set():
                    break
                log.warning("pod watch: %s: relisting", e)
                self.stopping.wait(1.0)

    def shutdown(self):
        self.stopping.set()
        with self.procs_lock:
            procs = list(self.procs)
        if procs:
            log.info("shutting down: killing %d process(es)", len(procs))
        self.kill_procs(procs, 3.0)
        # what the node-lifecycle controller would say after the grace period (it is off here)
        for name in self.registered:
            conds = self.node_conditions()
            for c in conds:
                c.update({"status": "Unknown", "reason": "NodeStatusUnknown",
                          "message": "Kubelet stopped posting node status.", "lastTransitionTime": now_rfc3339()})
            try:
                self.kube.merge_patch("/api/v1/nodes/%s/status" % q(name), {"status": {"conditions": conds}},
                                      timeout=(3, 5))
            except Exception as e:  # noqa: BLE001
                log.warning("marking node %s Unknown: %s", name, e)


def main(argv=None):
    ap = argparse.ArgumentParser(description="snapcrypt e2e test node agent (a TEST DOUBLE of a kubelet)")
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="admin kubeconfig (default $KUBECONFIG)")
    ap.add_argument("--state-dir", required=True, help="logs/, pvcs/, pods/ go here")
    ap.add_argument("--snapcrypt-binary", help="local binary that replaces the snapcrypt image's entrypoint")
    ap.add_argument("--node", action="append", required=True, help="node name to register (repeatable)")
    ap.add_argument("--node-label", action="append", default=[], metavar="K=V", help="extra label on every node")
    ap.add_argument("--snapcrypt-image-substring", default="snapcrypt",
                    help="containers whose image contains this run as local processes (default: snapcrypt)")
    ap.add_argument("--run-image", action="append", default=[], metavar="SUBSTRING",
                    help="containers whose image contains SUBSTRING also run as local processes, their "
                         "command as it is (repeatable; e.g. busybox, to seed volumes the same way as on "
                         "a real cluster)")
    ap.add_argument("--no-schedule-unpinned", action="store_true",
                    help="only bind pods that name one of our nodes (kubernetes.io/hostname); "
                         "default: bind every unscheduled pod that fits one of our nodes")
    ap.add_argument("--schedule-unpinned-in", action="append", default=[], metavar="NAMESPACE",
                    help="with --no-schedule-unpinned: still bind unpinned pods of this namespace "
                         "(a test's own namespace, when agents run side by side)")
    ap.add_argument("--no-provision", action="store_true",
                    help="do not create PVs for unbound PVCs (pods then use the claim dir unbound)")
    ap.add_argument("--pass-env", action="append",
                    default=["RUST_BACKTRACE", "RUST_LOG", "LLVM_PROFILE_FILE", "CARGO_LLVM_COV_TARGET_DIR"],
                    help="agent env vars passed on to processes unless the pod sets them (repeatable)")
    ap.add_argument("--token-seconds", type=int, default=86400, help="ServiceAccount token lifetime")
    ap.add_argument("--max-grace-seconds", type=float, default=10.0, help="cap on termination grace periods")
    ap.add_argument("--heartbeat-seconds", type=float, default=10.0)
    ap.add_argument("--pid-file", help="write the agent's pid here (tests/cluster/stop.sh stops agents "
                                       "whose pid file is $SNAPCRYPT_CLUSTER_DIR/pids/node-agent*.pid)")
    ap.add_argument("--log-file", help="default: <state-dir>/node-agent.log")
    ap.add_argument("-v", "--verbose", action="store_true", help="full log on stderr too")
    args = ap.parse_args(argv)
    if not args.kubeconfig:
        ap.error("--kubeconfig or $KUBECONFIG is required")
    if args.snapcrypt_binary:
        args.snapcrypt_binary = os.path.abspath(args.snapcrypt_binary)
        if not os.access(args.snapcrypt_binary, os.X_OK):
            ap.error("--snapcrypt-binary %s is not executable" % args.snapcrypt_binary)

    os.makedirs(args.state_dir, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(threadName)s: %(message)s")
    fh = logging.FileHandler(args.log_file or os.path.join(args.state_dir, "node-agent.log"))
    fh.setFormatter(fmt)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    sh.setLevel(logging.INFO if args.verbose else logging.WARNING)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(fh)
    root.addHandler(sh)
    logging.getLogger("urllib3").setLevel(logging.ERROR)

    agent = Agent(args)

    def on_signal(signum, _frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write("%d\n" % os.getpid())

    def ready():
        log.info("ready: nodes %s, watching pods", ", ".join(agent.nodes))
        try:
            print("node-agent ready", flush=True)
        except (BrokenPipeError, OSError):
            pass

    rc = 0
    try:
        agent.register_nodes()
        threading.Thread(target=agent.heartbeat, name="heartbeat", daemon=True).start()
        agent.watch_pods(ready)
    except SystemExit as e:
        if e.code not in (0, None):
            log.error("%s", e.code)
            rc = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        agent.shutdown()
        if args.pid_file:
            try:
                os.unlink(args.pid_file)
            except OSError:
                pass
        log.info("stopped")
    return rc


if __name__ == "__main__":
    sys.exit(main())
