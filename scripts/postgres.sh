#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback, for running Airflow's metadata DB on Postgres
# without Docker (tests/deploy/test_postgres_stack.py, or by hand).
#
#   scripts/postgres.sh start    install Debian's PostgreSQL if missing, initdb, start, create
#                                the role and database; does nothing that is already done
#   scripts/postgres.sh stop     stop the server (its data stays until the folder is removed)
#   scripts/postgres.sh status   exit 0 when it runs
#   scripts/postgres.sh url      print the SQLAlchemy URL (psycopg2) of the database
#
# Settings (environment):
#   FLYWHEEL_PG_DIR       the server's folder: data/, socket/, server.log, password
#                         (default: .cache/postgres in the project)
#   FLYWHEEL_PG_PORT      TCP port on 127.0.0.1 (default 55432; 5432 is left to a system server)
#   FLYWHEEL_PG_DB        database and role (default airflow)
#   FLYWHEEL_PG_PASSWORD  the role's password; when unset, one is generated at first start and
#                         kept in $FLYWHEEL_PG_DIR/password (mode 600). Never printed by `start`.
#
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user that
# Debian's package creates, and that user must be able to reach FLYWHEEL_PG_DIR. Local
# connections use a socket in a private folder (trust: only the server's user reaches it);
# TCP connections on 127.0.0.1 need the password (scram-sha-256).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${FLYWHEEL_PG_DIR:-$ROOT/.cache/postgres}"
PORT="${FLYWHEEL_PG_PORT:-55432}"
DB="${FLYWHEEL_PG_DB:-airflow}"
DATA="$DIR/data"
SOCK="$DIR/socket"

die() { echo "postgres.sh: $*" >&2; exit 1; }

[[ "$DB" =~ ^[a-z_][a-z0-9_]*$ ]] || die "FLYWHEEL_PG_DB must be a plain lower-case identifier, got '$DB'"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "FLYWHEEL_PG_PORT must be a number, got '$PORT'"

pg_bin() {
    local bin
    bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$bin" && -x "$bin/pg_ctl" ]] && echo "$bin"
}

install_postgres() {
    local sudo=""
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null || die "PostgreSQL is not installed and installing it needs root (or sudo)"
        sudo="sudo"
    fi
    echo "postgres.sh: installing Debian's postgresql package" >&2
    # No default cluster: the package would otherwise start a server of its own on port 5432.
    $sudo mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confold postgresql >/dev/null
}

# Run a command as the server's user: `postgres` when we are root, else ourselves.
as_server() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

running() {
    [[ -f "$DATA/PG_VERSION" ]] && as_server "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

password() {
    if [[ -n "${FLYWHEEL_PG_PASSWORD:-}" ]]; then
        # URL-safe characters only: the password goes into a connection URL and a SQL literal.
        [[ "$FLYWHEEL_PG_PASSWORD" =~ ^[A-Za-z0-9._~-]+$ ]] || die "FLYWHEEL_PG_PASSWORD may hold only A-Z a-z 0-9 . _ ~ -"
        printf '%s' "$FLYWHEEL_PG_PASSWORD"
    else
        [[ -f "$DIR/password" ]] || die "no FLYWHEEL_PG_PASSWORD and no $DIR/password: run 'start' first"
        cat "$DIR/password"
    fi
}

init_cluster() {
    mkdir -p "$DIR"
    if [[ -z "${FLYWHEEL_PG_PASSWORD:-}" && ! -f "$DIR/password" ]]; then
        (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$DIR/password")
    fi
    mkdir -p "$DATA" "$SOCK"
    chmod 700 "$DATA" "$SOCK"
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres: "$DATA" "$SOCK"
        touch "$DIR/server.log" && chown postgres: "$DIR/server.log"
        runuser -u postgres -- test -w "$DATA" \
            || die "the postgres user cannot reach $DIR (a parent folder is private); set FLYWHEEL_PG_DIR elsewhere"
    fi
    as_server "$BIN/initdb" -D "$DATA" --username=postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
}

start() {
    [[ -f "$DATA/PG_VERSION" ]] || init_cluster
    if ! running; then
        as_server "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $PORT -k $SOCK" start >/dev/null \
            || { tail -n 20 "$DIR/server.log" >&2; die "the server did not start (log: $DIR/server.log)"; }
    fi
    local psql=(as_server "$BIN/psql" -h "$SOCK" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
    # The password travels on stdin as a psql variable, never on a command line.
    if [[ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB'")" != 1 ]]; then
        printf '%s\n' "\\set pw '$(password)'" "CREATE ROLE $DB LOGIN PASSWORD :'pw';" | "${psql[@]}"
    fi
    if [[ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]]; then
        "${psql[@]}" -c "CREATE DATABASE $DB OWNER $DB"
    fi
    echo "postgres.sh: PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT, database $DB ($DIR)"
}

stop() {
    if running; then
        as_server "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    fi
}

case "${1:-}" in
    start)
        BIN="$(pg_bin)" || { install_postgres; BIN="$(pg_bin)" || die "no PostgreSQL after installing it"; }
        start ;;
    stop | status | url)
        BIN="$(pg_bin)" || die "PostgreSQL is not installed: run 'start'"
        case "$1" in
            stop) stop ;;
            status) running ;;
            url) echo "postgresql+psycopg2://$DB:$(password)@127.0.0.1:$PORT/$DB" ;;
        esac ;;
    *) die "usage: $0 start|stop|status|url" ;;
esac
