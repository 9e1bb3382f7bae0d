# shellcheck shell=bash
# Private PostgreSQL, Redis and nginx instances for Confab's tests and local
# cluster. Source this file; it defines functions and changes nothing until
# one is called.
#
#   ensure_packages              install postgresql, redis-server, nginx-light
#                                (and curl, pgbench) with apt-get when missing
#   free_port [N]                print N (default 1) distinct free TCP ports
#   start_postgres DIR           initdb into DIR/pg (once) and start it;
#                                exports PGHOST PGPORT PGUSER CONFAB_TEST_PG_URL
#   start_redis DIR              start redis-server (no persistence);
#                                exports CONFAB_TEST_REDIS_URL
#   write_nginx_conf DIR LISTEN UPSTREAM...
#                                render nginx/confab.conf.template into
#                                DIR/nginx.conf
#   start_nginx DIR LISTEN UPSTREAM...
#                                write_nginx_conf, then start nginx on it
#   stop_services                stop everything started above (idempotent)
#
# LISTEN is a port ("8000", bound on 127.0.0.1) or "HOST:PORT"; each UPSTREAM
# is a port on 127.0.0.1 or "HOST:PORT". Every instance runs on 127.0.0.1, on a
# free port, with its data, pid file and logs under DIR: nothing depends on
# (or disturbs) a system-wide service. All of it works as root: PostgreSQL
# runs as the `postgres` user (runuser), nginx's workers as its default user.
#
# Also exported: CONFAB_PG_BIN (the newest /usr/lib/postgresql/*/bin),
# CONFAB_TEST_NGINX (the nginx binary), CONFAB_TEST_NGINX_TEMPLATE (the
# template's absolute path), CONFAB_TEST_REDIS_SERVER (the redis-server binary).

if [[ -n "${_CONFAB_SERVICES_SH:-}" ]]; then
    return 0
fi
_CONFAB_SERVICES_SH=1

CONFAB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# What start_* started, for stop_services.
_CONFAB_PG_DATADIRS=()
_CONFAB_REDIS_INSTANCES=()   # "PORT PIDFILE"
_CONFAB_NGINX_PIDFILES=()

_svc_log() { printf '[services] %s\n' "$*" >&2; }
_svc_die() { printf '[services] error: %s\n' "$*" >&2; return 1; }

# Newest installed PostgreSQL server bin dir, e.g. /usr/lib/postgresql/15/bin.
pg_bin_dir() {
    local d best="" best_v=-1 v
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] || continue
        v="${d#/usr/lib/postgresql/}"
        v="${v%%/*}"
        v="${v%%.*}"
        [[ "$v" =~ ^[0-9]+$ ]] || continue
        if ((v > best_v)); then
            best_v=$v
            best=$d
        fi
    done
    [[ -n "$best" ]] || return 1
    printf '%s\n' "$best"
}

# Install whatever is missing, then export the binaries' locations.
ensure_packages() {
    local missing=()
    pg_bin_dir >/dev/null || missing+=(postgresql)
    # pgbench (scripts/bench store-floor) comes with the server in Debian 12;
    # where it does not, from the client package.
    compgen -G '/usr/lib/postgresql/*/bin/pgbench' >/dev/null || command -v pgbench >/dev/null ||
        missing+=(postgresql-client)
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        missing+=(redis-server)
    fi
    if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
        missing+=(nginx-light)
    fi
    command -v curl >/dev/null || missing+=(curl)

    if ((${#missing[@]} > 0)); then
        _svc_log "installing ${missing[*]} with apt-get"
        if [[ $EUID -ne 0 ]]; then
            _svc_die "missing ${missing[*]}: run as root, or install them: apt-get install ${missing[*]}"
            return 1
        fi
        # Keep the packages' post-install scripts from starting system-wide
        # services (port 80, 5432, 6379): only private instances are used.
        local policy=/usr/sbin/policy-rc.d made_policy=""
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 755 "$policy"
            made_policy=1
        fi
        local rc=0
        # A failing third-party source should not stop the install: try it.
        DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
            _svc_log "apt-get update failed; trying the install anyway"
        # nginx-light may be missing from newer releases: take nginx then.
        if [[ " ${missing[*]} " == *" nginx-light "* ]] &&
            ! apt-cache show nginx-light >/dev/null 2>&1; then
            missing=("${missing[@]/nginx-light/nginx}")
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null || rc=$?
        if [[ -n $made_policy ]]; then
            rm -f "$policy"
        fi
        if ((rc != 0)); then
            _svc_die "apt-get install ${missing[*]} failed ($rc)"
            return 1
        fi
    fi

    CONFAB_PG_BIN="$(pg_bin_dir)" || {
        _svc_die "no PostgreSQL server under /usr/lib/postgresql/*/bin"
        return 1
    }
    CONFAB_TEST_NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
    CONFAB_TEST_NGINX_TEMPLATE="${CONFAB_NGINX_TEMPLATE:-$CONFAB_ROOT/nginx/confab.conf.template}"
    CONFAB_TEST_REDIS_SERVER="$(command -v redis-server)"
    export CONFAB_PG_BIN CONFAB_TEST_NGINX CONFAB_TEST_NGINX_TEMPLATE CONFAB_TEST_REDIS_SERVER
}

# Print N distinct TCP ports that are free on 127.0.0.1 right now (the kernel
# picks them: all N sockets are bound at once, so they differ).
free_port() {
    local n="${1:-1}"
    if command -v python3 >/dev/null; then
        python3 - "$n" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
    s.close()
PY
        return
    fi
    # No python3: random ports in a range the kernel does not hand out by
    # default (ip_local_port_range starts at 32768), skipping listening ones.
    local seen=" " p
    while ((n > 0)); do
        p=$((20000 + RANDOM % 12000))
        [[ "$seen" == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            seen+="$p "
            printf '%s\n' "$p"
            n=$((n - 1))
        fi
    done
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Run a command as the postgres user when we are root (PostgreSQL refuses to
# run as root), as ourselves otherwise.
_as_pg() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# start_postgres DIR: a private cluster in DIR/pg (initialised on first use,
# reused when DIR/pg already holds one), trust auth, fsync on, on 127.0.0.1 at
# a free port.
start_postgres() {
    local dir="${1:?start_postgres DIR}"
    [[ -n "${CONFAB_PG_BIN:-}" ]] || CONFAB_PG_BIN="$(pg_bin_dir)" || {
        _svc_die "PostgreSQL is not installed (run ensure_packages)"
        return 1
    }
    dir="$(cd "$dir" && pwd)" || return 1
    local data="$dir/pg" log="$dir/postgres.log"

    if [[ $EUID -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || {
            _svc_die "no 'postgres' user (it comes with the postgresql package)"
            return 1
        }
        # The postgres user must reach DIR/pg: let others traverse DIR (not
        # list it), and give it the data dir and its log file.
        chmod o+x "$dir"
        local parent
        parent="$(dirname "$dir")"
        while [[ "$parent" != / ]]; do
            if ! runuser -u postgres -- test -x "$parent"; then
                _svc_die "user postgres cannot enter $parent: choose a DIR under /tmp"
                return 1
            fi
            parent="$(dirname "$parent")"
        done
        mkdir -p "$data"
        touch "$log"
        chown postgres: "$data" "$log"
    else
        mkdir -p "$data"
    fi
    chmod 700 "$data"

    if [[ ! -f "$data/PG_VERSION" ]]; then
        _svc_log "initdb $data"
        # --no-sync only skips initdb's own final flush; the server keeps
        # fsync=on (below), so commits are durable as in production.
        if ! _as_pg "$CONFAB_PG_BIN/initdb" -D "$data" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
            cat "$dir/initdb.log" >&2
            _svc_die "initdb failed"
            return 1
        fi
        echo "include_if_exists = 'confab.conf'" | _as_pg tee -a "$data/postgresql.conf" >/dev/null
    fi

    # A Unix socket path is limited to 107 bytes; past that, TCP only.
    local sockdir="$data"
    if ((${#data} + 20 > 107)); then
        sockdir=""
    fi

    local attempt port
    for attempt in 1 2 3; do
        port="$(free_port 1)"
        _as_pg tee "$data/confab.conf" >/dev/null <<EOF
# Written by scripts/lib/services.sh at each start.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sockdir'
max_connections = 300
fsync = on
synchronous_commit = on
full_page_writes = on
logging_collector = off
log_min_messages = warning
EOF
        if _as_pg "$CONFAB_PG_BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null; then
            _CONFAB_PG_DATADIRS+=("$data")
            export PGHOST=127.0.0.1 PGPORT="$port" PGUSER=postgres
            export CONFAB_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
            export CONFAB_PG_BIN
            _svc_log "postgres ready on 127.0.0.1:$port (data $data, log $log)"
            return 0
        fi
        _svc_log "postgres did not start on port $port (attempt $attempt):"
        tail -n 5 "$log" >&2 || true
        # The failed start may have left a postmaster that never got ready.
        _as_pg "$CONFAB_PG_BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
    done
    _svc_die "postgres failed to start; see $log"
}

# start_redis DIR: redis-server on 127.0.0.1 at a free port, no RDB, no AOF,
# daemonized with DIR/redis.pid and DIR/redis.log.
start_redis() {
    local dir="${1:?start_redis DIR}"
    command -v redis-server >/dev/null || {
        _svc_die "redis-server is not installed (run ensure_packages)"
        return 1
    }
    dir="$(cd "$dir" && pwd)" || return 1
    local conf="$dir/redis.conf" pidfile="$dir/redis.pid" log="$dir/redis.log"
    local attempt port i
    for attempt in 1 2 3; do
        port="$(free_port 1)"
        rm -f "$pidfile"
        cat >"$conf" <<EOF
# Written by scripts/lib/services.sh.
bind 127.0.0.1
port $port
protected-mode yes
daemonize yes
pidfile $pidfile
logfile $log
dir $dir
save ""
appendonly no
EOF
        redis-server "$conf" >/dev/null || true
        for ((i = 0; i < 100; i++)); do
            if [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == PONG ]]; then
                _CONFAB_REDIS_INSTANCES+=("$port $pidfile")
                export CONFAB_TEST_REDIS_URL="redis://127.0.0.1:$port/"
                _svc_log "redis ready on 127.0.0.1:$port (log $log)"
                return 0
            fi
            sleep 0.1
        done
        _svc_log "redis did not answer on port $port (attempt $attempt):"
        tail -n 5 "$log" >&2 || true
        _kill_pidfile "$pidfile"
    done
    _svc_die "redis failed to start; see $log"
}

# write_nginx_conf DIR LISTEN UPSTREAM...: render the template into
# DIR/nginx.conf.
write_nginx_conf() {
    local dir="${1:?write_nginx_conf DIR LISTEN UPSTREAM...}" listen="${2:?LISTEN}"
    shift 2
    (($# > 0)) || {
        _svc_die "write_nginx_conf: at least one UPSTREAM"
        return 1
    }
    local template="${CONFAB_TEST_NGINX_TEMPLATE:-${CONFAB_NGINX_TEMPLATE:-$CONFAB_ROOT/nginx/confab.conf.template}}"
    [[ -f "$template" ]] || {
        _svc_die "no nginx template at $template"
        return 1
    }
    dir="$(cd "$dir" && pwd)" || return 1
    [[ "$listen" == *:* ]] || listen="127.0.0.1:$listen"

    local upstreams="" u
    for u in "$@"; do
        [[ "$u" == *:* ]] || u="127.0.0.1:$u"
        [[ -n "$upstreams" ]] && upstreams+=$'\n'
        upstreams+="        server $u max_fails=1 fail_timeout=2s;"
    done

    local conf
    conf="$(<"$template")"
    conf="${conf//'{{UPSTREAMS}}'/"$upstreams"}"
    conf="${conf//'{{LISTEN}}'/"$listen"}"
    conf="${conf//'{{PREFIX}}'/"$dir"}"
    # The template asks for 65536 descriptors per worker; where the hard limit
    # is lower (and cannot be raised, e.g. without CAP_SYS_RESOURCE), ask for
    # the hard limit instead of logging a setrlimit alert at every start.
    local hard
    hard="$(ulimit -Hn)"
    if [[ "$hard" =~ ^[0-9]+$ ]] && ((hard < 65536)); then
        conf="${conf//'worker_rlimit_nofile 65536;'/"worker_rlimit_nofile $hard;"}"
    fi
    printf '%s\n' "$conf" >"$dir/nginx.conf"
}

# start_nginx DIR LISTEN UPSTREAM...: a private nginx (daemon, pid in
# DIR/nginx.pid, errors in DIR/nginx-error.log), ready when this returns.
start_nginx() {
    local dir="${1:?start_nginx DIR LISTEN UPSTREAM...}" listen="${2:?LISTEN}"
    write_nginx_conf "$@" || return 1
    shift 2
    dir="$(cd "$dir" && pwd)" || return 1
    local nginx="${CONFAB_TEST_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
    local pidfile="$dir/nginx.pid" errlog="$dir/nginx-error.log"
    local port="${listen##*:}" i
    [[ "$listen" == *:* ]] || listen="127.0.0.1:$listen"
    rm -f "$pidfile"
    # -e: the error log used before the config is read (the compiled-in one
    # is under /var/log/nginx); -p: relative paths resolve under DIR.
    if ! "$nginx" -e "$errlog" -p "$dir/" -c "$dir/nginx.conf"; then
        tail -n 5 "$errlog" >&2 || true
        _svc_die "nginx failed to start; see $errlog"
        return 1
    fi
    for ((i = 0; i < 50; i++)); do
        if [[ -s "$pidfile" ]] && port_in_use "$port"; then
            _CONFAB_NGINX_PIDFILES+=("$pidfile")
            _svc_log "nginx ready on $listen -> $* (error log $errlog)"
            return 0
        fi
        sleep 0.1
    done
    _kill_pidfile "$pidfile"
    _svc_die "nginx did not come up on port $port; see $errlog"
}

# Send TERM to the pid in FILE, wait up to 10 s, then KILL.
_kill_pidfile() {
    local pidfile="$1" pid i
    [[ -s "$pidfile" ]] || return 0
    pid="$(<"$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# Stop everything this shell started, newest first. Safe to call twice.
stop_services() {
    local pidfile inst port data i
    for ((i = ${#_CONFAB_NGINX_PIDFILES[@]} - 1; i >= 0; i--)); do
        pidfile="${_CONFAB_NGINX_PIDFILES[i]}"
        # TERM is nginx's fast shutdown: open WebSockets are cut, not awaited.
        _kill_pidfile "$pidfile"
        _svc_log "nginx stopped"
    done
    _CONFAB_NGINX_PIDFILES=()

    for ((i = ${#_CONFAB_REDIS_INSTANCES[@]} - 1; i >= 0; i--)); do
        inst="${_CONFAB_REDIS_INSTANCES[i]}"
        port="${inst%% *}"
        pidfile="${inst#* }"
        redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
        _kill_pidfile "$pidfile"
        _svc_log "redis stopped"
    done
    _CONFAB_REDIS_INSTANCES=()

    for ((i = ${#_CONFAB_PG_DATADIRS[@]} - 1; i >= 0; i--)); do
        data="${_CONFAB_PG_DATADIRS[i]}"
        if [[ -f "$data/postmaster.pid" ]]; then
            _as_pg "$CONFAB_PG_BIN/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
                _as_pg "$CONFAB_PG_BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
        fi
        _svc_log "postgres stopped"
    done
    _CONFAB_PG_DATADIRS=()
}
