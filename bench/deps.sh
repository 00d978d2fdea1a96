#!/bin/sh
# Install what `make bench` needs, if missing: first the build and test
# packages (tools/deps.sh), then the benchmark's peers and load generators:
# wrk, redis-server, redis-tools (redis-benchmark, redis-cli), lua-luv,
# strace, and Debian's nodejs when no `node` is on the PATH.
# A redis-server that the package's service starts on installation is
# stopped again, so that it does not compete with the measured servers (the
# bench starts its own, on a free port, pinned like the others).
set -e
cd "$(dirname "$0")/.."
PKGS="wrk redis-server redis-tools lua-luv strace util-linux procps"
command -v node >/dev/null 2>&1 || PKGS="$PKGS nodejs"
redis_before=$(pgrep -x redis-server || true)
sh tools/deps.sh $PKGS
if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi

# The package may have started its service: stop that one (only if it was
# not running before we installed), through the service manager.
redis_after=$(pgrep -x redis-server || true)
if [ -z "$redis_before" ] && [ -n "$redis_after" ]; then
  echo "bench deps: stopping the redis-server the package started"
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    $SUDO systemctl stop redis-server
    $SUDO systemctl disable redis-server >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    $SUDO service redis-server stop || true
  fi
fi
exit 0
