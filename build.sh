#!/usr/bin/env bash
# build.sh — the one entry point for building, testing and trying convocate.
#
#   ./build.sh deps            apt packages, the .venv with pinned Python deps, a running dockerd
#   ./build.sh image [--real]  the session image: convocate:<v>-standin (tests) or convocate:<v> (Claude Code)
#   ./build.sh test [ARGS]     deps + test image + the test suite (ARGS go to pytest)
#   ./build.sh lint            ruff over the code
#   ./build.sh demo [--standin|--stop]
#                              a local cluster on loopback, a session, and your terminal attached to it
#
# Everything it needs it installs itself (Debian 12, as root or with sudo).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$REPO"

VENV="$REPO/.venv"
PY="$VENV/bin/python"
CACHE="$REPO/.cache"
DOCKER=/usr/bin/docker
VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' convocate/common/version.py)"
TEST_IMAGE="convocate:${VERSION}-standin"
REAL_IMAGE="convocate:${VERSION}"
APT_PACKAGES=(docker.io tmux openssh-client debootstrap python3 python3-venv iproute2 ca-certificates dnsmasq-base)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- deps ---------------------------------------------------------------------------
apt_deps() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

venv_deps() {
    local stamp="$VENV/.requirements.sha256"
    local want
    want="$(cat requirements/*.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ -x "$PY" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return
    fi
    say "creating $VENV with pinned Python dependencies"
    [ -x "$PY" ] || /usr/bin/python3 -m venv "$VENV"
    "$PY" -m pip install -q --disable-pip-version-check -r requirements/dev.txt
    "$PY" -m pip install -q --disable-pip-version-check --no-deps -e .
    echo "$want" > "$stamp"
}

start_dockerd() {
    if "$DOCKER" info >/dev/null 2>&1; then
        return
    fi
    mkdir -p "$CACHE"
    say "starting dockerd (log: $CACHE/dockerd.log)"
    as_root sh -c "nohup /usr/sbin/dockerd >'$CACHE/dockerd.log' 2>&1 &"
    for _ in $(seq 1 120); do
        "$DOCKER" info >/dev/null 2>&1 && return
        sleep 0.25
    done
    die "dockerd did not come up; see $CACHE/dockerd.log"
}

cmd_deps() {
    apt_deps
    venv_deps
    start_dockerd
}

# --- image ----------------------------------------------------------------------------
build_image() {  # build_image TAG [none]: 'none' puts the stand-in claude in place of Claude Code
    local args=(--tag "$1" --cache-dir "$CACHE/images" --convocate-version "$VERSION")
    [ "${2:-}" = none ] && args+=(--claude-code none)
    packaging/image/build-image.sh "${args[@]}"
}

cmd_image() {
    cmd_deps
    if [ "${1:-}" = "--real" ]; then
        build_image "$REAL_IMAGE"
    else
        build_image "$TEST_IMAGE" none
    fi
}

# --- test, lint -----------------------------------------------------------------------------
cmd_test() {
    cmd_deps
    build_image "$TEST_IMAGE" none
    say "running the test suite"
    CONVOCATE_TEST_IMAGE="$TEST_IMAGE" "$PY" -m pytest "$@"
}

cmd_lint() {
    venv_deps
    "$VENV/bin/ruff" check convocate convocate_agent convocate_host tests
}

# --- demo -----------------------------------------------------------------------------------
cmd_demo() {
    local state="$REPO/.demo" port="${CONVOCATE_DEMO_PORT:-2222}"
    if [ "${1:-}" = "--stop" ]; then
        venv_deps
        "$PY" -m tests.harness demo-down "$state"
        return
    fi
    cmd_deps
    local image="$REAL_IMAGE"
    if [ "${1:-}" = "--standin" ]; then
        image="$TEST_IMAGE"
        build_image "$TEST_IMAGE" none
    elif ! build_image "$REAL_IMAGE"; then
        say "could not build the image with Claude Code from the npm registry; using the stand-in claude"
        image="$TEST_IMAGE"
        build_image "$TEST_IMAGE" none
    fi
    "$PY" -m tests.harness demo-up "$state" --image "$image" --port "$port"
    export CONVOCATE_ROOT="$state/root"
    local cli="$VENV/bin/convocate" sessions
    sessions="$("$cli" ls --json)"
    if ! grep -q '"name": "demo"' <<<"$sessions"; then
        "$cli" new demo
    fi
    "$cli" ls
    say "attaching to session 'demo' (Ctrl-b d detaches; ./build.sh demo again re-attaches;"
    say "./build.sh demo --stop stops the agent). Other commands: CONVOCATE_ROOT=$state/root $cli help"
    exec "$cli" attach demo
}

cmd_not_yet() {
    die "'$1' is not implemented in this version"
}

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
}

main() {
    local cmd="${1:-}"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        deps) cmd_deps ;;
        image) cmd_image "$@" ;;
        test) cmd_test "$@" ;;
        lint) cmd_lint ;;
        demo) cmd_demo "$@" ;;
        zipapps | debs | bench) cmd_not_yet "$cmd" ;;
        "" | help | -h | --help) usage ;;
        *) usage; die "unknown command '$cmd'" ;;
    esac
}

main "$@"
