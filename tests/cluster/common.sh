# shellcheck shell=bash
# shellcheck disable=SC2034  # sourced: the variables are used by the scripts that source it
# Shared settings of the snapcrypt e2e test cluster scripts. Sourced, not run.
# Every address is loopback; every port can be overridden from the environment.

SNAPCRYPT_CACHE=${SNAPCRYPT_CACHE:-${HOME:-/root}/.cache/snapcrypt}
K8S_BIN=${SNAPCRYPT_K8S_BIN:-$SNAPCRYPT_CACHE/k8s/bin}
CLUSTER_DIR=${SNAPCRYPT_CLUSTER_DIR:-/tmp/snapcrypt-cluster}

ETCD_PORT=${SNAPCRYPT_ETCD_PORT:-23791}
ETCD_PEER_PORT=${SNAPCRYPT_ETCD_PEER_PORT:-23792}
APISERVER_PORT=${SNAPCRYPT_APISERVER_PORT:-16443}
KCM_PORT=${SNAPCRYPT_KCM_PORT:-10357}
SERVICE_CIDR=${SNAPCRYPT_SERVICE_CIDR:-10.0.0.0/24}
SA_ISSUER=${SNAPCRYPT_SA_ISSUER:-https://kubernetes.default.svc.cluster.local}

HOST=127.0.0.1
APISERVER_URL=https://$HOST:$APISERVER_PORT
PKI=$CLUSTER_DIR/pki
PIDS=$CLUSTER_DIR/pids
LOGS=$CLUSTER_DIR/logs
ADMIN_KUBECONFIG=$CLUSTER_DIR/admin.kubeconfig

# Components in start order (stop goes in reverse).
COMPONENTS=(etcd kube-apiserver kube-controller-manager)

pid_of() { # name -> pid if its pid file names a live process of ours, else nothing
  local f=$PIDS/$1.pid p
  [ -f "$f" ] || return 1
  p=$(cat "$f" 2>/dev/null) || return 1
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
  # Guard against pid reuse: the process must still be the binary we started.
  case "$(cat /proc/"$p"/comm 2>/dev/null)" in
    # apiserver.sh: the moment before it execs kube-apiserver.
    etcd|kube-apiserver|apiserver.sh|kube-controller*) echo "$p" ;;
    *) return 1 ;;
  esac
}

curl_admin() { # path -> body; authenticated with the admin client cert
  curl -sS --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "$APISERVER_URL$1"
}

apiserver_ready() { [ "$(curl_admin /readyz 2>/dev/null)" = ok ]; }
etcd_healthy() { curl -sS --max-time 3 "http://$HOST:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }
kcm_healthy() { [ "$(curl -sSk --max-time 3 "https://$HOST:$KCM_PORT/healthz" 2>/dev/null)" = ok ]; }

# wait_for DESCRIPTION DEADLINE_SECONDS COMMAND...: polls COMMAND until it succeeds or the
# deadline passes (then returns 1). Polling is the synchronisation, the interval is only pacing.
wait_for() {
  local what=$1 secs=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@"; do
    if [ "$(date +%s)" -ge "$end" ]; then
      echo "timed out after ${secs}s waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}
