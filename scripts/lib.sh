# shellcheck shell=bash
# Helpers shared by scripts/test and scripts/sandbox. Source it, do not run it.

# The Debian packages the test suite and the sandbox need: PostgreSQL 15, the
# PoWA repository schema and the extensions a PoWA remote server uses.
POWA_DEB_PACKAGES=(
    postgresql-15
    postgresql-15-powa
    postgresql-15-pg-qualstats
    postgresql-15-pg-stat-kcache
    postgresql-15-pg-wait-sampling
    postgresql-15-pg-track-settings
    postgresql-15-hypopg
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

# ensure_deb_packages: installs whichever of POWA_DEB_PACKAGES is missing,
# as root directly, otherwise through sudo.
ensure_deb_packages() {
    command -v dpkg-query >/dev/null 2>&1 ||
        die "dpkg-query not found: this script expects Debian 12 (needed packages: ${POWA_DEB_PACKAGES[*]})"

    local missing=() pkg
    for pkg in "${POWA_DEB_PACKAGES[@]}"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        info "Debian packages present: ${POWA_DEB_PACKAGES[*]}"
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
        apt-get install -y --no-install-recommends "${POWA_DEB_PACKAGES[@]}"
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
