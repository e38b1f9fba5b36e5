#!/usr/bin/env bash
# `make demo`: hakit's main job on the embedded default, in the test lab on this one machine.
# Grows as features land. Today: a 3-node cluster, its membership seen from a node, a power loss of
# one node detected and healed, and a mirror module packaged, validated and activated on a node.
set -euo pipefail
export HAKIT_LAB="${HAKIT_LAB:-hakitdemo}"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() { say "hakit lab down"; hakit lab down; }
trap cleanup EXIT

# Wait until `hakit cluster state --json` on node1 shows NODE with reachable == WANT; print the delay.
wait_reachable() {
  local node=$1 want=$2 limit_ms=$(( $3 * 1000 )) t0 elapsed
  t0=$(date +%s%N)
  while :; do
    if hakit lab exec node1 -- hakit cluster state --json 2>/dev/null \
        | python3 -c "import json,sys; d=json.load(sys.stdin); n={x['name']: x for x in d['nodes']}; sys.exit(0 if n['$node']['reachable'] == ('$want' == 'yes') else 1)"; then
      elapsed=$(( ($(date +%s%N) - t0) / 1000000 ))
      echo "$node reachable=$want after ${elapsed} ms"
      return 0
    fi
    elapsed=$(( ($(date +%s%N) - t0) / 1000000 ))
    if (( elapsed > limit_ms )); then
      echo "demo: $node did not become reachable=$want within $3 s" >&2
      return 1
    fi
    sleep 0.1
  done
}

say "hakit lab up --nodes 3 --client   (namespaces, bridge, cluster.xml + key, hakitd on every node)"
hakit lab down >/dev/null 2>&1 || true
hakit lab up --nodes 3 --client
hakit lab status

say "cluster membership seen from node1"
wait_reachable node2 yes 10
wait_reachable node3 yes 10
hakit lab exec node1 -- hakit cluster state

say "power loss of node3 (SIGKILL of all its processes)"
hakit lab kill node3
wait_reachable node3 no 5
hakit lab exec node1 -- hakit cluster state

say "node3 boots again"
hakit lab start node3
wait_reachable node3 yes 10
hakit lab exec node1 -- hakit cluster state

say "a mirror module on node1: template, validation, activation"
work=$(mktemp -d /tmp/hakit-demo.XXXXXX)
hakit module template mirror "$work/mirror.safe"
hakit lab exec node1 -- hakit module install -m demo "$work/mirror.safe"
hakit lab exec node1 -- hakit module list
echo "(the template's virtual IP is an empty placeholder: hakit refuses to activate it, and says why)"
hakit lab exec node1 -- hakit config -m demo || true
rm -rf "$work"
say "done"
