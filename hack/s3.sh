#!/usr/bin/env bash
# A real S3-compatible server on this host for Kubetune's tests and local cluster: versitygw
# (github.com/versity/versitygw, Apache-2.0) with its posix backend, built from the Go module
# proxy and cached like the control plane. Buckets are folders under DIR/data.
#
#   hack/s3.sh build                build the binary if missing (cached; a lock makes parallel
#                                   callers wait for one build), print its path
#   hack/s3.sh up DIR PORT [HOST]   start it on HOST:PORT (127.0.0.1; state, pid and log in
#                                   DIR), create bucket `kubetune`
#   hack/s3.sh down DIR             stop it and delete DIR
#   hack/s3.sh env PORT [HOST]      print the AWS_* variables a client needs
#
# Called by hack/cluster.sh (up/down/env) and by the storage fixture in tests/conftest.py
# (`build` before the tests' timeouts start, then `up` on a free port in 29000-29099).
# Settings: KUBETUNE_CACHE (~/.cache/kubetune). The root credentials are fixed test values:
# the server listens on loopback, or on the real node's bridge address (HOST, which cluster.sh
# passes when the real node is on, so that pods reach it; nothing off the host can).
set -euo pipefail

VERSITYGW_VERSION=v1.8.0
KUBETUNE_CACHE=${KUBETUNE_CACHE:-$HOME/.cache/kubetune}
S3_BIN_DIR="$KUBETUNE_CACHE/bin/versitygw-$VERSITYGW_VERSION"
S3_BIN="$S3_BIN_DIR/versitygw"
ACCESS_KEY=kubetune
SECRET_KEY=kubetune-secret-key
BUCKET=kubetune

info() { echo "s3.sh: $*" >&2; }
die() { echo "s3.sh: error: $*" >&2; exit 1; }

# Builds into a temporary sibling and renames it, under a lock: an interrupted build never
# leaves a binary that looks complete, and two callers never build at once.
cmd_build() {
  mkdir -p "$KUBETUNE_CACHE/bin" "$KUBETUNE_CACHE/logs"
  exec 9>"$KUBETUNE_CACHE/bin/.versitygw.lock"
  flock 9
  if [[ ! -x $S3_BIN ]]; then
    command -v go >/dev/null || die "Go >= 1.25 is needed to build versitygw ($S3_BIN missing)"
    local tmp="$S3_BIN_DIR.partial.$$" log="$KUBETUNE_CACHE/logs/build-versitygw-$VERSITYGW_VERSION.log"
    local start=$SECONDS
    info "building versitygw $VERSITYGW_VERSION from the Go module proxy (log: $log)"
    rm -rf "$tmp" && mkdir -p "$tmp"
    if ! (cd "$tmp" && CGO_ENABLED=0 GOTOOLCHAIN=local GOBIN="$tmp" \
          go install -trimpath -ldflags="-s -w" \
          "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION") >"$log" 2>&1; then
      rm -rf "$tmp"
      tail -n 20 "$log" >&2
      die "build failed; full log: $log"
    fi
    rm -rf "$S3_BIN_DIR" && mv "$tmp" "$S3_BIN_DIR"
    info "built in $((SECONDS - start))s: $S3_BIN"
  fi
  flock -u 9
  echo "$S3_BIN"
}

answers() { curl -s -o /dev/null --max-time 2 "http://$2:$1/"; }

# is_ours PID DIR: the process runs our cached versitygw on DIR (a reused pid is left alone).
is_ours() {
  [[ $(readlink "/proc/$1/exe" 2>/dev/null) == "$S3_BIN" ]] &&
    [[ $(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) == *"$2/data"* ]]
}

cmd_up() {
  local dir=$1 port=$2 host=${3:-127.0.0.1} i
  [[ -n $dir && -n $port ]] || die "usage: $0 up DIR PORT [HOST]"
  cmd_build >/dev/null
  if [[ -f $dir/versitygw.pid ]] && is_ours "$(<"$dir/versitygw.pid")" "$dir"; then
    info "already running on $host:$port"
    return 0
  fi
  ! answers "$port" "$host" || die "$host:$port is taken by another process"
  mkdir -p "$dir/data/$BUCKET"
  ROOT_ACCESS_KEY_ID=$ACCESS_KEY ROOT_SECRET_ACCESS_KEY=$SECRET_KEY \
    setsid "$S3_BIN" --port "$host:$port" posix "$dir/data" \
    >"$dir/versitygw.log" 2>&1 </dev/null &
  echo $! >"$dir/versitygw.pid"
  for ((i = 0; i < 150; i++)); do
    answers "$port" "$host" && { info "versitygw up on $host:$port (data: $dir/data)"; return 0; }
    # Not is_ours here: until the exec the pid is still the forked shell, not versitygw.
    kill -0 "$(<"$dir/versitygw.pid")" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$dir/versitygw.log" >&2
  die "versitygw did not answer on $host:$port (log: $dir/versitygw.log)"
}

cmd_down() {
  local dir=$1 pid i
  [[ -n $dir ]] || die "usage: $0 down DIR"
  if [[ -f $dir/versitygw.pid ]]; then
    pid=$(<"$dir/versitygw.pid")
    if is_ours "$pid" "$dir"; then
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do is_ours "$pid" "$dir" || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -rf "$dir"
}

cmd_env() {
  local port=$1 host=${2:-127.0.0.1}
  echo "export AWS_ENDPOINT_URL=\"http://$host:$port\""
  echo "export AWS_ACCESS_KEY_ID=\"$ACCESS_KEY\""
  echo "export AWS_SECRET_ACCESS_KEY=\"$SECRET_KEY\""
  echo "export AWS_REGION=\"us-east-1\""
}

case "${1:-}" in
  build) cmd_build ;;
  up) cmd_up "${2:-}" "${3:-}" "${4:-}" ;;
  down) cmd_down "${2:-}" ;;
  env) cmd_env "${2:?usage: $0 env PORT [HOST]}" "${3:-}" ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
