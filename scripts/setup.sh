#!/usr/bin/env bash
# Set up this machine to develop and test Cube. Safe to run again: each step
# only does what is missing.
#
#   1. .venv in the repo root with Cube installed editable, with its dev tools
#   2. a Docker engine that answers `docker info` (installed and started if we are
#      root on Debian/Ubuntu; a running engine is always reused, never restarted)
#   3. a statically linked busybox (package busybox-static)
#   4. Debian's chromium and chromium-driver (the dashboard's browser tests)
#   5. the test image cube-busybox:latest (scripts/build-image.sh)
#   6. a Prometheus server (package prometheus): tests scrape a cube dev with it
#
# Usage: scripts/setup.sh [--rebuild]
#   --rebuild   rebuild the test image even if it exists
# Environment:
#   PYTHON           interpreter for the venv (default python3; needs 3.11+)
#   CUBE_TEST_IMAGE  image tag to build (default cube-busybox:latest)
#   CUBE_DOCKERD_LOG where a dockerd started here logs (default /var/log/cube-dockerd.log)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

image_args=()
for arg in "$@"; do
    case "$arg" in
        --rebuild) image_args+=(--rebuild) ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

log() { echo "setup: $*"; }
die() {
    echo "setup: $*" >&2
    exit 1
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }
have_apt() { command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; }

apt_updated=0
# Install Debian packages if we can (root with apt); return 1 if we cannot.
apt_install() {
    is_root && have_apt || return 1
    export DEBIAN_FRONTEND=noninteractive
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        apt-get -qq -o DPkg::Lock::Timeout=300 update >/dev/null || return 1
        apt_updated=1
    fi
    log "apt-get install $*"
    apt-get -qq -y -o DPkg::Lock::Timeout=300 install "$@" >/dev/null || return 1
}

# ---------------------------------------------------------------------- 1. venv
python="${PYTHON:-python3}"
venv_ok() { [[ -x .venv/bin/python ]] && .venv/bin/python -m pip --version >/dev/null 2>&1; }

if [[ -e .venv ]] && ! venv_ok; then
    # Not ours to delete: it may belong to another user or another Python.
    die ".venv exists but '.venv/bin/python -m pip' does not work: remove .venv and run again"
fi
if ! venv_ok; then
    if ! command -v "$python" >/dev/null 2>&1; then
        apt_install python3 python3-venv ||
            die "no $python found: install Python 3.11+ (with venv) and run again"
    fi
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$python is $("$python" -V 2>&1); Cube needs Python 3.11+ (set PYTHON=...)"
    log "creating .venv with $("$python" -V 2>&1)"
    if ! "$python" -m venv .venv >/dev/null 2>&1 || ! venv_ok; then
        rm -rf .venv
        apt_install python3-venv ||
            die "'$python -m venv' does not work: install python3-venv (Debian/Ubuntu) and run again"
        "$python" -m venv .venv
    fi
fi

# Reinstall only when pyproject.toml (or where the checkout lives) changed.
stamp=".venv/.cube-installed"
want="$(cat pyproject.toml - <<<"$repo" | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    log "pip install -e '.[dev]' into .venv"
    .venv/bin/python -m pip install -qq --disable-pip-version-check -e '.[dev]'
    echo "$want" >"$stamp"
else
    log ".venv up to date"
fi

# --------------------------------------------------------------- 2. Docker engine
dockerd_log="${CUBE_DOCKERD_LOG:-/var/log/cube-dockerd.log}"
# `docker version` asks only /version: `docker info` can stall for minutes on a busy swarm.
docker_ok() { command -v docker >/dev/null 2>&1 && timeout 30 docker version >/dev/null 2>&1; }

# A dockerd already running (maybe still starting): wait for it, never start a second.
dockerd_running() {
    local pid
    pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
    [[ -n "$pid" && -d "/proc/$pid" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]
}

wait_for_docker() { # $1: pid of the dockerd we started, or empty
    local _
    for _ in $(seq 1 60); do
        docker_ok && return 0
        if [[ -n "$1" ]] && ! kill -0 "$1" 2>/dev/null; then
            log "dockerd exited"
            return 1
        fi
        sleep 1
    done
    return 1
}

if docker_ok; then
    log "docker engine answers"
else
    if ! is_root || ! have_apt; then
        die "no Docker engine answers 'docker info': install Docker (docker.io) and start it" \
            "(e.g. 'sudo systemctl start docker'), or run this script as root on Debian/Ubuntu"
    fi
    if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
        apt_install docker.io
    fi
    if ! docker_ok; then
        pid=""
        if dockerd_running; then
            log "dockerd is running but not answering yet; waiting"
        else
            log "starting dockerd (log: $dockerd_log)"
            # Fully detached: own session, no stdin, and none of our stdout/stderr
            # (a CI runner waits for every holder of its pipes before it finishes).
            setsid dockerd >"$dockerd_log" 2>&1 </dev/null &
            pid=$!
        fi
        if ! wait_for_docker "$pid"; then
            echo "setup: the Docker engine did not come up (waited up to 60 s); last lines of $dockerd_log:" >&2
            tail -n 30 "$dockerd_log" >&2 2>/dev/null || true
            exit 1
        fi
    fi
    log "docker engine answers"
fi

# ------------------------------------------------------------------ 3. busybox
is_static() {
    local out
    out="$(LC_ALL=C ldd "$1" 2>&1 || true)"
    [[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]]
}
static_busybox() {
    local f
    for f in "${BUSYBOX:-}" /bin/busybox /usr/bin/busybox; do
        [[ -n "$f" && -x "$f" ]] && is_static "$f" && return 0
    done
    return 1
}

if static_busybox; then
    log "static busybox present"
else
    apt_install busybox-static ||
        die "no static busybox: install busybox-static (Debian/Ubuntu) or set BUSYBOX=/path"
fi

# ------------------------------------------------------------------ 4. browser
# The dashboard's tests drive this chromium through this chromedriver (tests/support/browser.py):
# nothing is downloaded at test time.
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    log "chromium and chromedriver present"
else
    apt_install chromium chromium-driver ||
        die "no chromium/chromedriver: install Debian's chromium and chromium-driver packages"
fi

# --------------------------------------------------------------- 5. test image
bash scripts/build-image.sh "${image_args[@]}"

# ---------------------------------------------------------------- 6. prometheus
# Only its binary is used (tests/e2e/test_metrics_e2e.py runs it on a free loopback port);
# the package's own service, if the machine runs services, is left as it is.
if [[ -x /usr/bin/prometheus ]]; then
    log "prometheus present"
else
    apt_install prometheus ||
        die "no /usr/bin/prometheus: install the prometheus package (Debian/Ubuntu)"
fi
log "ready"
