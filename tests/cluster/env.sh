#!/usr/bin/env bash
# Print the environment for talking to the test cluster:  eval "$(tests/cluster/env.sh)"
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$HERE/common.sh"
echo "export KUBECONFIG=$ADMIN_KUBECONFIG"
echo "export SNAPCRYPT_CLUSTER_DIR=$CLUSTER_DIR"
echo "export SNAPCRYPT_TEST_APISERVER=$APISERVER_URL"
