#!/usr/bin/env bash
# A throwaway Redis server on loopback: the Celery broker of the CeleryExecutor stack test
# (tests/deploy/test_celery_stack.py), or for running the Celery stack by hand without Docker.
#
#   scripts/redis.sh start    install Debian's redis-server if missing, start a server of our own
#                             (not the package's service); does nothing when it already runs
#   scripts/redis.sh stop     stop it (SHUTDOWN NOSAVE: a broker's queue is not kept)
#   scripts/redis.sh status   exit 0 when it answers
#   scripts/redis.sh url      print the broker URL (redis://:PASSWORD@127.0.0.1:PORT/0)
#
# Settings (environment):
#   FLYWHEEL_REDIS_DIR       the server's folder: redis.conf, redis.pid, server.log, password
#                            (default: .cache/redis in the project)
#   FLYWHEEL_REDIS_PORT      TCP port on 127.0.0.1 (default 56379; 6379 is left to a system server)
#   FLYWHEEL_REDIS_PASSWORD  the password; when unset, one is generated at first start and kept in
#                            $FLYWHEEL_REDIS_DIR/password (mode 600). Never printed by `start`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${FLYWHEEL_REDIS_DIR:-$ROOT/.cache/redis}"
PORT="${FLYWHEEL_REDIS_PORT:-56379}"

die() { echo "redis.sh: $*" >&2; exit 1; }

[[ "$PORT" =~ ^[0-9]+$ ]] || die "FLYWHEEL_REDIS_PORT must be a number, got '$PORT'"

install_redis() {
    local sudo=""
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null || die "Redis is not installed and installing it needs root (or sudo)"
        sudo="sudo"
    fi
    echo "redis.sh: installing Debian's redis-server package" >&2
    # The package would start a system server on 6379; policy-rc.d (Debian's hook for exactly
    # this) stops it, and is removed again if we put it there.
    local policy=/usr/sbin/policy-rc.d placed=""
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        placed=1
    fi
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confold redis-server >/dev/null
    [[ -n "$placed" ]] && $sudo rm -f "$policy"
    return 0
}

password() {
    if [[ -n "${FLYWHEEL_REDIS_PASSWORD:-}" ]]; then
        printf '%s' "$FLYWHEEL_REDIS_PASSWORD"
    elif [[ -f "$DIR/password" ]]; then
        cat "$DIR/password"
    else
        die "no password: start the server first, or set FLYWHEEL_REDIS_PASSWORD"
    fi
}

cli() {
    REDISCLI_AUTH="$(password)" redis-cli -h 127.0.0.1 -p "$PORT" --no-auth-warning "$@"
}

running() {
    command -v redis-cli >/dev/null && [[ -f "$DIR/password" || -n "${FLYWHEEL_REDIS_PASSWORD:-}" ]] \
        && [[ "$(cli ping 2>/dev/null)" == "PONG" ]]
}

start() {
    command -v redis-server >/dev/null || install_redis
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    if [[ -z "${FLYWHEEL_REDIS_PASSWORD:-}" && ! -f "$DIR/password" ]]; then
        (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=\n' > "$DIR/password")
    fi
    if running; then
        echo "redis.sh: already running on 127.0.0.1:$PORT" >&2
        return 0
    fi
    # The password goes in a file of mode 600, never on a command line (ps would show it).
    (
        umask 077
        cat > "$DIR/redis.conf" <<EOF
bind 127.0.0.1
port $PORT
protected-mode yes
requirepass $(password)
daemonize yes
pidfile $DIR/redis.pid
logfile $DIR/server.log
dir $DIR
save ""
appendonly no
EOF
    )
    redis-server "$DIR/redis.conf"
    for _ in $(seq 1 50); do
        running && { echo "redis.sh: running on 127.0.0.1:$PORT" >&2; return 0; }
        sleep 0.2
    done
    tail -n 20 "$DIR/server.log" >&2 || true
    die "the server did not answer on 127.0.0.1:$PORT"
}

stop() {
    if running; then
        cli shutdown nosave >/dev/null 2>&1 || true
    fi
    if [[ -f "$DIR/redis.pid" ]]; then
        local pid
        pid="$(cat "$DIR/redis.pid")"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        rm -f "$DIR/redis.pid"
    fi
    echo "redis.sh: stopped" >&2
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) running ;;
    url) echo "redis://:$(password)@127.0.0.1:$PORT/0" ;;
    *) die "usage: scripts/redis.sh start|stop|status|url" ;;
esac
