#!/usr/bin/env bash
# Installs what dlock's tests need on Debian: the Redis, ZooKeeper and etcd servers (run by the
# test harness as local child processes, never as system services) and protoc with the
# protobuf well-known types (etcd-client's build script needs them). Safe to run again.
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
# redis-cli (--cluster create) joins the Redis Cluster tests' nodes.
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v etcd >/dev/null || need+=(etcd-server)
[ -f /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
command -v java >/dev/null || need+=(default-jre-headless)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/timestamp.proto ] || need+=(libprotobuf-dev)
command -v openssl >/dev/null || need+=(openssl)
# kazoo for the ZooKeeper layout interop tests, run with /usr/bin/python3 (Debian's own).
/usr/bin/python3 -c "import kazoo" 2>/dev/null || need+=(python3-kazoo)
# Curator and a JDK for the Curator layout interop tests (a small Java program compiled by the test).
command -v javac >/dev/null || need+=(default-jdk-headless)
[ -f /usr/share/java/curator-recipes.jar ] || need+=(libcurator-recipes-java libcurator-framework-java)
# etcdctl (its `lock` command is etcd's Go concurrency.Mutex) for the etcd layout interop tests.
command -v etcdctl >/dev/null || need+=(etcd-client)
# redis-py's Lock (the standard SET NX PX layout) for the Redis layout interop tests.
/usr/bin/python3 -c "import redis" 2>/dev/null || need+=(python3-redis)

if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "test servers: $(redis-server --version | cut -d' ' -f3), etcd $(etcd --version | head -1 | awk '{print $3}'), zookeeper $(ls /usr/share/java/zookeeper-3*.jar | grep -o '3[0-9.]*[0-9]')"
