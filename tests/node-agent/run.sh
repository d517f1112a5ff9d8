#!/usr/bin/env bash
# Start the test node agent (a test double of a kubelet; see agent.py's docstring).
#   tests/node-agent/run.sh --kubeconfig K --state-dir D --snapcrypt-binary B --node node-a [--node node-b]
# agent.py itself switches to the venv tests/cluster/build.sh made ($SNAPCRYPT_CACHE/venv).
exec python3 "$(dirname "${BASH_SOURCE[0]}")/agent.py" "$@"
