# shellcheck shell=bash
# Helpers shared by scripts/test, scripts/sandbox and scripts/bench. Source it,
# do not run it.

# The Debian packages the build, the test suite and the sandbox need:
# PostgreSQL 15, the PoWA repository schema, the extensions a PoWA remote
# server uses, OpenSSL's headers for the TLS crate, and make and gcc for
# the jemalloc allocator's build.
POWA_DEB_PACKAGES=(
    postgresql-15
    postgresql-15-powa
    postgresql-15-pg-qualstats
    postgresql-15-pg-stat-kcache
    postgresql-15-pg-wait-sampling
    postgresql-15-pg-track-settings
    postgresql-15-hypopg
    libssl-dev
    pkg-config
    make
    gcc
)

# Where Debian puts the PostgreSQL 15 server and client programs.
# shellcheck disable=SC2034 # used by the scripts that source this file
PG_BINDIR=/usr/lib/postgresql/15/bin

# The repository root (the parent of scripts/).
# shellcheck disable=SC2034 # used by the scripts that source this file
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# rustup installs cargo in ~/.cargo/bin, which a non-login shell may not have
# on its PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/nonexistent}/.cargo/bin/cargo" ]]; then
    PATH="$HOME/.cargo/bin:$PATH"
    export PATH
fi

# heading TEXT: a visible separator before each step.
heading() {
    printf '\n==== %s ====\n' "$*"
}

# info TEXT / die TEXT: messages prefixed with the script's name.
info() {
    printf '[%s] %s\n' "$(basename "$0")" "$*"
}

die() {
    printf '[%s] error: %s\n' "$(basename "$0")" "$*" >&2
    exit 1
}

# wait_until TIMEOUT_SECONDS DESCRIPTION COMMAND [ARGS...]
# Runs COMMAND every 0.2 s until it succeeds. Returns 1 and says what was
# awaited if it has not succeeded after TIMEOUT_SECONDS.
wait_until() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            printf '[%s] timed out after %ss waiting for %s\n' "$(basename "$0")" "$timeout" "$what" >&2
            return 1
        fi
        sleep 0.2
    done
}

# deb_installed PACKAGE: true when dpkg says PACKAGE is installed.
deb_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# ensure_deb_packages: installs whichever of POWA_DEB_PACKAGES is missing.
ensure_deb_packages() {
    ensure_debs "${POWA_DEB_PACKAGES[@]}"
}

# ensure_debs PACKAGE...: installs whichever of the PACKAGEs is missing, as
# root directly, otherwise through sudo.
ensure_debs() {
    local wanted=("$@")
    command -v dpkg-query >/dev/null 2>&1 ||
        die "dpkg-query not found: this script expects Debian 12 (needed packages: ${wanted[*]})"

    local missing=() pkg
    for pkg in "${wanted[@]}"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        info "Debian packages present: ${wanted[*]}"
        return 0
    fi

    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 ||
            die "missing Debian packages and no sudo to install them; as root run: apt-get install ${missing[*]}"
        sudo=(sudo)
    fi
    info "installing missing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${wanted[@]}"
}

# ---------------------------------------------------------------------------
# The PoWA 5 chroot: Debian 13 "trixie" with PostgreSQL 17 and PoWA 5, for
# the PoWA 5 tests and the sandbox's --powa 5 (Debian 12 has no PoWA 5).

# Where the chroot is kept, outside the checkout so that it is built once.
POWA5_CHROOT=${POWA5_CHROOT:-/var/cache/powa-collector/powa5-trixie}
export POWA5_CHROOT

# What the chroot holds besides trixie's minimal base.
POWA5_DEB_PACKAGES=(
    postgresql-17
    postgresql-17-powa
    postgresql-17-pg-qualstats
    postgresql-17-pg-stat-kcache
    postgresql-17-pg-wait-sampling
    postgresql-17-pg-track-settings
    postgresql-17-hypopg
)

# The file that says the chroot is complete, and with which packages.
POWA5_STAMP=.powa-collector-chroot

# powa5_chroot_ready: the chroot exists and holds POWA5_DEB_PACKAGES.
powa5_chroot_ready() {
    [[ -f $POWA5_CHROOT/$POWA5_STAMP ]] &&
        [[ "$(cat "$POWA5_CHROOT/$POWA5_STAMP")" == "${POWA5_DEB_PACKAGES[*]}" ]]
}

# ensure_powa5_chroot: builds the chroot in POWA5_CHROOT unless it is ready.
# It is built beside its final place and renamed at the end, so that an
# interrupted build leaves nothing that looks ready.
ensure_powa5_chroot() {
    if powa5_chroot_ready; then
        info "PoWA 5 chroot present: $POWA5_CHROOT"
        return 0
    fi
    ((EUID == 0)) ||
        die "the PoWA 5 chroot is missing in $POWA5_CHROOT and building it needs root (debootstrap, chroot): run scripts/powa5-chroot as root, or set POWA5_CHROOT to a ready one"
    if ! command -v debootstrap >/dev/null 2>&1; then
        info "installing debootstrap"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap
    fi
    local build=$POWA5_CHROOT.build
    rm -rf "$build" "$POWA5_CHROOT"
    mkdir -p "$build"
    info "building the PoWA 5 chroot (Debian trixie, PostgreSQL 17) in $POWA5_CHROOT"
    debootstrap --variant=minbase trixie "$build" http://deb.debian.org/debian >"$build.log" 2>&1 ||
        die "debootstrap trixie failed; see $build.log"
    # Installing postgresql-common must neither start a service nor create
    # the "main" cluster.
    printf '#!/bin/sh\nexit 101\n' >"$build/usr/sbin/policy-rc.d"
    chmod 0755 "$build/usr/sbin/policy-rc.d"
    mkdir -p "$build/etc/postgresql-common"
    echo 'create_main_cluster = false' >"$build/etc/postgresql-common/createcluster.conf"
    chroot "$build" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        --no-install-recommends "${POWA5_DEB_PACKAGES[@]}" >>"$build.log" 2>&1 ||
        die "installing ${POWA5_DEB_PACKAGES[*]} in the chroot failed; see $build.log"
    chroot "$build" apt-get clean
    # Test clusters live in the chroot's /tmp, which postgres must reach.
    chmod 1777 "$build/tmp"
    echo "${POWA5_DEB_PACKAGES[*]}" >"$build/$POWA5_STAMP"
    mv "$build" "$POWA5_CHROOT"
    rm -f "$build.log"
    info "PoWA 5 chroot ready: $POWA5_CHROOT ($(du -sh "$POWA5_CHROOT" | cut -f1))"
}

# ensure_rust_components: cargo, and the rustfmt and clippy components.
ensure_rust_components() {
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install the Rust toolchain (https://rustup.rs) and retry"
    local tool component
    for tool in fmt clippy; do
        if ! cargo "$tool" --version >/dev/null 2>&1; then
            component=$([[ $tool == fmt ]] && echo rustfmt || echo clippy)
            command -v rustup >/dev/null 2>&1 ||
                die "cargo $tool is missing and rustup is not available to add component $component"
            info "adding rustup component $component"
            rustup component add "$component"
        fi
    done
    cargo --version
    cargo fmt --version
    cargo clippy --version
}

# ---------------------------------------------------------------------------
# Throwaway clusters and child processes, for the scripts that start their
# own PostgreSQL clusters (scripts/sandbox, scripts/bench). A script may
# define its own version of any of these after sourcing this file.

# as_pg_owner COMMAND [ARGS...]: runs COMMAND as user postgres when root
# (initdb and postgres refuse to run as root), as the current user otherwise.
as_pg_owner() {
    if ((EUID == 0)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# port_in_use PORT: something accepts connections on 127.0.0.1:PORT.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port [EXCLUDED...]: a port nobody listens on, away from 5432 and from
# the kernel's ephemeral range.
free_port() {
    local port try
    for try in $(seq 1 200); do
        port=$((20000 + (RANDOM + try) % 12000))
        [[ " $* " == *" $port "* ]] && continue
        port_in_use "$port" && continue
        echo "$port"
        return 0
    done
    die "no free port found on 127.0.0.1"
}

# psql_at PORT DBNAME SQL...: runs SQL as postgres on a cluster listening on
# 127.0.0.1:PORT, unaligned output without headers.
psql_at() {
    local port=$1 db=$2
    shift 2
    "$PG_BINDIR/psql" -X -q -A -t -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

# stop_cluster DIR: stops the cluster in DIR if it runs, fast then immediate.
stop_cluster() {
    local dir=$1
    [[ -f $dir/postmaster.pid ]] || return 0
    as_pg_owner "$PG_BINDIR/pg_ctl" stop -D "$dir" -m fast -w -t 30 >/dev/null 2>&1 ||
        as_pg_owner "$PG_BINDIR/pg_ctl" stop -D "$dir" -m immediate -w -t 30 >/dev/null 2>&1 ||
        info "could not stop the cluster in $dir"
}

# process_gone PID: process PID has exited (bash reaps its children as they
# exit, and keeps their status for wait).
process_gone() {
    ! kill -0 "$1" 2>/dev/null
}

# stop_child PID NAME SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL; reap.
# PID must be a child of this shell. Sets STOPPED_STATUS to the exit status.
# shellcheck disable=SC2034 # STOPPED_STATUS is for the scripts that source this file
stop_child() {
    local pid=$1 name=$2 timeout=$3
    STOPPED_STATUS=0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_until "$timeout" "$name (pid $pid) to stop" process_gone "$pid"; then
            info "killing $name (pid $pid)"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || STOPPED_STATUS=$?
}
