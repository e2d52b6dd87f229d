#!/usr/bin/env bash
# build.sh — the one entry point for building, testing and trying convocate.
#
#   ./build.sh deps            apt packages, the .venv with pinned Python deps, a running dockerd
#   ./build.sh image [--real | --claude-code VERSION|latest [--registry URL]]
#                              the session image: convocate:<v>-standin (tests), or convocate:<v> with
#                              Claude Code at the pinned version (--real); --claude-code first moves the
#                              pin (packaging/image/claude-code.version; latest: the npm registry's newest)
#   ./build.sh test [--full] [ARGS]  deps + both images (the real one at the pinned Claude Code) + the suite
#                              (ARGS go to pytest; --full: full reliability run; CONVOCATE_REAL_IMAGE=none:
#                              no real Claude Code image, tests/realclaude skip; CONVOCATE_TEST_IMAGE=TAG:
#                              another stand-in tag)
#   ./build.sh zipapps [--out DIR]
#                              the three role zipapps (shiv, reproducible) [build/zipapps]
#   ./build.sh debs [--out DIR] [--version V]
#                              the source package and the three .debs [build/debs]; --version
#                              builds the current tree as version V (upgrade tests)
#   ./build.sh lint            ruff, systemd-analyze verify on the units, lintian on the packages
#   ./build.sh bench [--json] [--only NAME]
#                              the benchmarks: every figure with its baseline and ratio
#   ./build.sh demo [--standin|--stop]
#                              a local cluster on loopback (agent and status listener), a session, and the TUI:
#                              real Claude Code (pinned) by default, --standin for the tests' stand-in claude
#
# Everything it needs it installs itself (Debian 12, as root or with sudo).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$REPO"

VENV="$REPO/.venv"
PY="$VENV/bin/python"
CACHE="$REPO/.cache"
BUILD="$REPO/build"
DOCKER=/usr/bin/docker
VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' convocate/common/version.py)"
TEST_IMAGE="convocate:${VERSION}-standin"
REAL_IMAGE="convocate:${VERSION}"
APT_PACKAGES=(docker.io tmux openssh-client debootstrap python3 python3-venv iproute2 ca-certificates dnsmasq-base
              build-essential debhelper po-debconf dpkg-dev lintian systemd libvirt-clients qemu-utils genisoimage
              rsyslog rsyslog-gnutls logrotate ufw)

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

cmd_image() {  # cmd_image [--real | --claude-code VERSION|latest [--registry URL]]
    local real=0 claude_code="" registry=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --real) real=1; shift ;;
            --claude-code) [ $# -ge 2 ] || die "image: --claude-code needs VERSION or latest"
                           claude_code="$2"; real=1; shift 2 ;;
            --registry) [ $# -ge 2 ] || die "image: --registry needs a URL"; registry=(--registry "$2"); shift 2 ;;
            *) die "image: unknown argument '$1'" ;;
        esac
    done
    cmd_deps
    if [ -n "$claude_code" ]; then
        # Resolve and pin first (atomically; a network error or a bad answer leaves the pin alone), then
        # build what the pin says: build-image.sh reads packaging/image/claude-code.version.
        "$PY" -m convocate_host.claude_pin pin "$claude_code" "${registry[@]}" \
            || die "image: the Claude Code pin was not changed; nothing was built"
    fi
    if [ "$real" -eq 1 ]; then
        build_image "$REAL_IMAGE"
    else
        build_image "$TEST_IMAGE" none
    fi
}

# --- test, lint -----------------------------------------------------------------------------
cmd_test() {  # cmd_test [--full] [PYTEST ARGS]: --full runs tests/reliability at full size (>= 10,000 fuzz cases)
    local reliability=fast
    if [ "${1:-}" = "--full" ]; then
        reliability=full
        shift
    fi
    cmd_deps
    # CONVOCATE_TEST_IMAGE / CONVOCATE_REAL_IMAGE: other tags (e.g. a branch's own, beside the shared ones).
    local standin="${CONVOCATE_TEST_IMAGE:-$TEST_IMAGE}"
    build_image "$standin" none
    # The real Claude Code image for tests/realclaude (-m realclaude): build-image.sh skips it when the
    # tag is up to date and reuses the cached npm stage otherwise; CONVOCATE_REAL_IMAGE=none leaves it
    # out and those tests skip, saying so.
    local real="${CONVOCATE_REAL_IMAGE:-$REAL_IMAGE}"
    if [ "$real" = none ]; then
        say "CONVOCATE_REAL_IMAGE=none: no real Claude Code image; the tests in tests/realclaude skip"
    else
        build_image "$real"
    fi
    say "running the test suite (reliability suite: $reliability; real Claude Code image: $real)"
    CONVOCATE_TEST_IMAGE="$standin" CONVOCATE_REAL_IMAGE="$real" CONVOCATE_RELIABILITY="$reliability" \
        "$PY" -m pytest --durations=30 "$@"   # the slowest tests, to keep CI under 40 minutes
}

cmd_lint() {
    apt_deps
    venv_deps
    say "ruff"
    "$VENV/bin/ruff" check convocate convocate_agent convocate_host tests
    say "systemd-analyze verify on packaging/systemd/*"
    local unit out
    for unit in packaging/systemd/*; do
        # --man=no: the man pages named in Documentation= are those of the packages, not installed here.
        if ! out="$(systemd-analyze verify --man=no "$unit" 2>&1)" || [ -n "$out" ]; then
            printf '%s\n' "$out" >&2
            die "systemd-analyze verify $unit failed"
        fi
    done
    cmd_debs
    say "lintian on the source package and the three .debs"
    lintian --fail-on error,warning --display-info "$BUILD/debs/convocate_${VERSION}_"*.changes
}

# --- zipapps, debs -----------------------------------------------------------------------------
cmd_zipapps() {
    local out="$BUILD/zipapps"
    while [ $# -gt 0 ]; do
        case "$1" in
            --out) out="$2"; shift 2 ;;
            *) die "zipapps: unknown argument '$1'" ;;
        esac
    done
    venv_deps
    PYTHON="$PY" packaging/shiv/build-zipapps --out "$out"
}

# stage_tree DIR: the working tree as git sees it (tracked and untracked files, not the ignored
# ones: no .venv, caches or build output) copied to DIR; without git, the tree minus those.
stage_tree() {
    mkdir -p "$1"
    if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
        git -C "$REPO" ls-files -z --cached --others --exclude-standard \
            | while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done \
            | tar -C "$REPO" --null -T - -cf - | tar -C "$1" -xf -
    else
        tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude=./.demo --exclude=./build \
            --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache --exclude='*.egg-info' -cf - . \
            | tar -C "$1" -xf -
    fi
}

cmd_debs() {
    local out="$BUILD/debs" version="$VERSION"
    while [ $# -gt 0 ]; do
        case "$1" in
            --out) out="$2"; shift 2 ;;
            --version) version="$2"; shift 2 ;;
            *) die "debs: unknown argument '$1'" ;;
        esac
    done
    apt_deps
    venv_deps
    out="$(mkdir -p "$out" && cd "$out" && pwd)"
    local stage="$out/.stage" src="$out/.stage/convocate-$version"
    rm -rf "$stage" "$out"/convocate*_*
    stage_tree "$src"
    if [ "$version" != "$VERSION" ]; then
        # Another version of the same tree: the code and debian/changelog must agree on it.
        sed -i "s/^__version__ = \".*\"/__version__ = \"$version\"/" "$src/convocate/common/version.py"
        local date
        date="$(dpkg-parsechangelog -l debian/changelog -SDate)"
        { printf 'convocate (%s) unstable; urgency=medium\n\n  * Rebuild of %s as %s.\n\n -- %s  %s\n\n' \
              "$version" "$VERSION" "$version" "$(dpkg-parsechangelog -l debian/changelog -SMaintainer)" "$date"
          cat debian/changelog; } > "$src/debian/changelog"
    fi
    say "dpkg-buildpackage of convocate $version (log: $out/build.log)"
    if ! (cd "$src" && PATH="$VENV/bin:$PATH" PYTHON="$PY" dpkg-buildpackage -us -uc >"$out/build.log" 2>&1); then
        tail -n 40 "$out/build.log" >&2
        die "dpkg-buildpackage failed; see $out/build.log"
    fi
    mv "$stage"/convocate*_* "$out/"
    rm -rf "$stage"
    ls -1 "$out"/*.deb "$out"/*.dsc >&2
}

# --- demo -----------------------------------------------------------------------------------
cmd_demo() {
    local state="$REPO/.demo" port="${CONVOCATE_DEMO_PORT:-2222}"
    if [ "${1:-}" = "--stop" ]; then
        venv_deps
        "$PY" -m tests.harness demo-down "$state"
        return
    fi
    case "${1:-}" in
        "" | --standin) ;;
        *) die "demo: unknown argument '$1' (--standin or --stop)" ;;
    esac
    cmd_deps
    local image="$REAL_IMAGE" real=1
    if [ "${1:-}" = "--standin" ]; then
        image="$TEST_IMAGE" real=0
        build_image "$TEST_IMAGE" none
    else
        # The real Claude Code at the pinned version (packaging/image/claude-code.version): the build needs the
        # Debian mirror and the npm registry, nothing else.
        build_image "$REAL_IMAGE" \
            || die "demo: could not build $REAL_IMAGE with Claude Code from the npm registry (see above);" \
                   "./build.sh demo --standin shows convocate with the tests' stand-in claude instead"
    fi
    "$PY" -m tests.harness demo-up "$state" --image "$image" --port "$port"
    export CONVOCATE_ROOT="$state/root"
    local cli="$VENV/bin/convocate" sessions
    sessions="$("$cli" ls --json)"
    if ! grep -q '"name": "demo"' <<<"$sessions"; then
        "$cli" new demo
    fi
    if [ "$real" -eq 1 ] && ! compgen -G "$CONVOCATE_ROOT/etc/convocate/credentials/*.json" >/dev/null; then
        # No credential stored on the demo's shell side (convocate auth set): Claude Code cannot log in by itself.
        say "No Claude credential is set, so the demo session shows Claude Code's login prompt."
        say "Give it one (an API key, or the token 'claude setup-token' prints; asked without echo), then restart:"
        say "  CONVOCATE_ROOT=$CONVOCATE_ROOT $cli auth set --api-key      (or --oauth-token)"
        say "  CONVOCATE_ROOT=$CONVOCATE_ROOT $cli restart demo"
    fi
    say "opening the TUI: Enter attaches to the highlighted session, Ctrl-b d comes back, Q quits."
    say "The cluster keeps running; ./build.sh demo opens the TUI again, ./build.sh demo --stop stops it."
    say "The CLI works on it too: CONVOCATE_ROOT=$state/root $cli help"
    exec "$cli"
}

# --- bench ----------------------------------------------------------------------------------
bench_sshd() {  # OpenSSH's sshd for bench_move's tar | ssh baselines: unpacked from its .deb, nothing installed
    local dir="$CACHE/openssh-server" libs
    libs="$dir/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
    if [ ! -x "$dir/usr/sbin/sshd" ] || [ ! -e "$libs/libwrap.so.0" ]; then
        rm -rf "$dir" && mkdir -p "$dir"
        # libwrap0: the one library of sshd's that a machine without openssh-server may lack
        if ! (cd "$dir" && apt-get download -q openssh-server libwrap0 >/dev/null 2>&1 \
              && for deb in ./*.deb; do dpkg-deb -x "$deb" .; done && rm -f ./*.deb); then
            say "cannot fetch openssh-server's .deb (apt-get download): the move baselines are left out"
            return
        fi
    fi
    if ! getent passwd sshd >/dev/null; then  # sshd's privilege separation user, as openssh-server's postinst makes it
        say "adding the system user sshd (sshd's privilege separation user) for the move baselines"
        as_root useradd --system --no-create-home --home-dir /run/sshd --shell /usr/sbin/nologin sshd
    fi
    export CONVOCATE_BENCH_SSHD="$dir/usr/sbin/sshd" CONVOCATE_BENCH_SSHD_LIBS="$libs"
}

cmd_bench() {
    cmd_deps
    build_image "$TEST_IMAGE" none
    cmd_zipapps >/dev/null
    bench_sshd
    say "running the benchmarks (each figure beside a baseline measured in the same run)"
    CONVOCATE_TEST_IMAGE="$TEST_IMAGE" "$PY" -m tests.bench.run "$@"
}

usage() {
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
}

main() {
    local cmd="${1:-}"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        deps) cmd_deps ;;
        image) cmd_image "$@" ;;
        test) cmd_test "$@" ;;
        lint) cmd_lint ;;
        zipapps) cmd_zipapps "$@" ;;
        debs) cmd_debs "$@" ;;
        demo) cmd_demo "$@" ;;
        bench) cmd_bench "$@" ;;
        "" | help | -h | --help) usage ;;
        *) usage; die "unknown command '$cmd'" ;;
    esac
}

main "$@"
