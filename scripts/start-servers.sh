#!/usr/bin/env bash
# Starts local servers for trying dlock by hand (tests start their own): Redis on 6379, 6380
# and 6381 (Redlock), ZooKeeper on 2181 and etcd on 2379, all on 127.0.0.1, with their files
# under ${DLOCK_SERVERS_DIR:-/tmp/dlock-servers}. `scripts/start-servers.sh stop` stops them.
set -euo pipefail

dir=${DLOCK_SERVERS_DIR:-/tmp/dlock-servers}

if [ "${1:-start}" = stop ]; then
    for pidfile in "$dir"/*.pid; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
    echo "stopped"
    exit 0
fi

bash "$(dirname "$0")/install-test-servers.sh" >/dev/null
mkdir -p "$dir"

start() { # name, command…
    local name=$1
    shift
    if [ -f "$dir/$name.pid" ] && kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then
        echo "$name already running"
        return
    fi
    nohup "$@" >"$dir/$name.log" 2>&1 &
    echo $! >"$dir/$name.pid"
    echo "started $name (log: $dir/$name.log)"
}

for port in 6379 6380 6381; do
    start "redis-$port" redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$dir"
done

mkdir -p "$dir/zookeeper"
cat >"$dir/zoo.cfg" <<CFG
tickTime=200
dataDir=$dir/zookeeper
clientPort=2181
clientPortAddress=127.0.0.1
minSessionTimeout=400
maxSessionTimeout=60000
admin.enableServer=false
4lw.commands.whitelist=*
# Every client of `dlock bench --clients 512` connects from 127.0.0.1; the default allows 60.
maxClientCnxns=0
CFG
start zookeeper java -Xmx256m -cp "/usr/share/java/*:/etc/zookeeper/conf" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg"

start etcd etcd --name dlock --data-dir "$dir/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster dlock=http://127.0.0.1:2380

echo
echo "redis://127.0.0.1:6379"
echo "redis+redlock://127.0.0.1:6379,127.0.0.1:6380,127.0.0.1:6381"
echo "zookeeper://127.0.0.1:2181   (answers a few seconds after start)"
echo "etcd://127.0.0.1:2379"
