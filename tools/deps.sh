#!/bin/sh
# Install the Debian packages sockrun needs to build and test, if missing.
# Build: lua5.4 liblua5.4-dev libuv1-dev pkg-config make gcc.
# Tests: lua-busted, and the real peers the example specs talk to
# (curl, netcat-openbsd, socat, python3), procps for kill/ps, tmux to
# drive the REPL through a terminal; clang with its libFuzzer runtime
# (make fuzz) and valgrind (make valgrind) for CI's deeper checks.
# Extra package names given as arguments are installed too, if missing
# (bench/deps.sh passes the benchmark's).
set -e
PKGS="lua5.4 liblua5.4-dev libuv1-dev pkg-config make gcc libc6-dev
      lua-busted curl netcat-openbsd socat python3 procps tmux
      clang libclang-rt-14-dev valgrind $*"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
    missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
if [ "$(id -u)" != 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
