#!/usr/bin/env bash
# `make demo`: hakit's main job on the embedded default, in the test lab on this one machine.
# Grows as features land. Today: a 3-node cluster, its membership seen from a node, a power loss of
# one node detected and healed; then a mirror module (web server + virtual IP) on two nodes: first
# start, prim/second, a hung primary taken over, its return, a swap.
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

say "module templates: the generic mirror module is refused until its placeholders are filled"
work=$(mktemp -d /tmp/hakit-demo.XXXXXX)
hakit module template mirror "$work/mirror.safe"
hakit confcheck "$work/mirror.safe" || true

# ---------------------------------------------------------------------------------------------
say "a mirror module: two nodes, a web server on the primary, a virtual IP (2-node lab + client)"
hakit lab down >/dev/null
hakit lab up --nodes 2 --client
vip=$(hakit lab status --json | python3 -c "import json,sys; print(json.load(sys.stdin)['vip_free'][0])")
echo "virtual IP: $vip"
cp -r "$(dirname "$0")/../demo/web" "$work/web"
sed -i "s/@VIP@/$vip/" "$work/web/conf/userconfig.xml"
(cd "$work/web" && python3 -m zipfile -c "$work/web.safe" conf bin)
for n in node1 node2; do
  hakit lab exec $n -- hakit module install -m web "$work/web.safe"
  hakit lab exec $n -- hakit config -m web
done
hakit lab exec node1 -- hakit waitstate -m web STOP --timeout 30 >/dev/null

say "first start: nobody knows yet whose data is good, so the module waits"
hakit lab exec node1 -- hakit start -m web
hakit lab exec node1 -- hakit waitstate -m web WAIT --timeout 30 >/dev/null
hakit lab exec node1 -- hakit state -m web
say "the administrator says node1 holds the data: prim on node1, second on node2"
hakit lab exec node1 -- hakit prim -m web
hakit lab exec node2 -- hakit second -m web
hakit lab exec node1 -- hakit waitstate -m web PRIM --timeout 30 >/dev/null
hakit lab exec node2 -- hakit waitstate -m web SECOND --timeout 30 >/dev/null
hakit lab exec node1 -- hakit state -m web -v
echo "client -> http://$vip:8080/ : $(hakit lab exec client -- curl -s --max-time 2 "http://$vip:8080/")"
for n in node1 node2; do
  addr=$(hakit lab status --json | python3 -c "import json,sys; print([h['addr'] for h in json.load(sys.stdin)['hosts'] if h['name']=='$n'][0])")
  echo "health check $n: $(hakit lab exec client -- curl -s -o /dev/null -w '%{http_code}' "http://$addr:9010/var/modules/web/ready.txt")"
done

say "node1 hangs (every process of node1 frozen): node2 takes over after the 2 s heartbeat timeout"
t0=$(date +%s%N)
hakit lab freeze node1
until [ "$(hakit lab exec client -- curl -s --max-time 0.5 "http://$vip:8080/")" = "served by node2" ]; do
  if (( ($(date +%s%N) - t0) / 1000000 > 30000 )); then echo "demo: no failover within 30 s" >&2; exit 1; fi
  sleep 0.02
done
echo "client -> http://$vip:8080/ : served by node2, $(( ($(date +%s%N) - t0) / 1000000 )) ms after the fault"
hakit lab exec node2 -- hakit state -m web
hakit lab exec node2 -- hakit log -m web -s 12

say "node1 wakes up: it sees that node2 took over with newer data and becomes its secondary"
hakit lab thaw node1
for _ in $(seq 300); do
  s1=$(hakit lab exec node1 -- hakit state -m web -lq; echo $?)
  s2=$(hakit lab exec node2 -- hakit state -m web -lq; echo $?)
  [ "$s1$s2" = 43 ] || [ "$s1$s2" = 34 ] && break
  sleep 0.2
done
hakit lab exec node1 -- hakit state -m web
hakit lab exec node2 -- hakit state -m web
echo "client -> http://$vip:8080/ : $(hakit lab exec client -- curl -s --max-time 2 "http://$vip:8080/")"

say "swap: the roles are exchanged on request"
primary=node1; [ "$s2" = 3 ] && primary=node2
hakit lab exec $primary -- hakit swap -m web
other=node2; [ $primary = node2 ] && other=node1
hakit lab exec $other -- hakit waitstate -m web PRIM --timeout 60 >/dev/null
hakit lab exec $primary -- hakit waitstate -m web SECOND --timeout 60 >/dev/null
echo "client -> http://$vip:8080/ : $(hakit lab exec client -- curl -s --max-time 2 "http://$vip:8080/")"
rm -rf "$work"
say "done"
