#!/usr/bin/env bash
# Installs Debian's redis-server (redis-server and redis-cli, for the Redis Cluster tier's
# tests: crates/redis-tier/tests) when redis-server is missing. Needs root (apt-get); does
# nothing when redis-server is already on PATH. The package's own service is stopped and
# disabled: the tests start their own clusters on free loopback ports.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-redis: redis-server is missing and this is not root: run 'apt-get install -y redis-server' as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y redis-server >/dev/null || { apt-get update >/dev/null && apt-get install -y redis-server >/dev/null; }
# the package may start a server on 6379; the tests do not use it
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
service redis-server stop >/dev/null 2>&1 || true
