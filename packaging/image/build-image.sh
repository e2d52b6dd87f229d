#!/usr/bin/env bash
# Build the convocate session image.
#
#   packaging/image/build-image.sh --tag TAG [--claude-code VERSION|none]
#       [--base-image IMAGE] [--cache-dir DIR] [--convocate-version V]
#       [--mirror URL] [--force] [--print-build]
#
# The Claude Code version is pinned in one place, claude-code.version beside
# this script (one line, a plain semver); --claude-code overrides it for one
# build. `./build.sh image --claude-code latest` moves the pin.
#
# Two steps:
#   1. Base image. Without --base-image, make sure `convocate-base:bookworm`
#      exists: reuse the image if Docker has it, else import the cached rootfs
#      tarball, else debootstrap a minbase bookworm rootfs from the host's
#      Debian mirror, cache its tarball and import it. No container registry
#      is needed.
#   2. Session image. `DOCKER_BUILDKIT=0 docker build` of this directory with
#      the build args BASE_IMAGE and CLAUDE_CODE_VERSION. The build is skipped
#      when TAG already exists with a `convocate.context-hash` label equal to
#      the hash of the build context, the build args and the base image ID.
#
# Environment: DOCKER (docker client to use, default /usr/bin/docker if it
# exists, else `docker` from PATH). Proxy variables (http_proxy, https_proxy,
# no_proxy and their upper-case forms) are passed to the build when set.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "${SCRIPT_DIR}/../.." && pwd)"
readonly SCRIPT_DIR REPO_DIR
readonly DEFAULT_BASE_IMAGE="convocate-base:bookworm"
# The one pin of Claude Code's version (the Dockerfile's ARG has no default:
# this script always passes it).
readonly PIN_FILE="${SCRIPT_DIR}/claude-code.version"
readonly SEMVER_RE='^[0-9]+\.[0-9]+\.[0-9]+([-.][0-9A-Za-z.]+)?$'
readonly DEFAULT_MIRROR="http://deb.debian.org/debian"
readonly SUITE="bookworm"
# The files docker build sees (the .dockerignore whitelists exactly these).
readonly CONTEXT_FILES=(.dockerignore Dockerfile entrypoint supervisor tmux.conf claude-standin
    session/convocate_report.py session/convocate-report session/convocate_mcp.py session/claude-config
    session/mcp-requirements.txt session/managed-settings.json session/mcp.json)

tag=""
claude_code=""
base_image=""
cache_dir="${REPO_DIR}/.cache/images"
convocate_version=""
mirror=""
force=0
print_build=0

usage() {
    cat <<EOF
usage: $(basename "$0") --tag TAG [--claude-code VERSION|none] [--base-image IMAGE]
                      [--cache-dir DIR] [--convocate-version V] [--mirror URL] [--force]
                      [--print-build]

  --tag TAG              name:tag of the session image to build (required)
  --claude-code VERSION  Claude Code version from npm, or 'none' for the stand-in
                         (default: the pin in ${PIN_FILE})
  --base-image IMAGE     existing local image to build FROM (default: build or
                         reuse ${DEFAULT_BASE_IMAGE} with debootstrap)
  --cache-dir DIR        where the base rootfs tarball is cached
                         (default <repo>/.cache/images)
  --convocate-version V  value of the convocate.version label (default: the version in
                         <repo>/pyproject.toml or convocate/common/version.py, else 'unknown')
  --mirror URL           Debian mirror for debootstrap and apt in the base image
                         (default: the host's apt sources, else ${DEFAULT_MIRROR})
  --force                build even when TAG is up to date
  --print-build          print what the build would use (tag, Claude Code version,
                         build args, labels, context hash) and exit without building;
                         the base image must exist already
EOF
}

die() { echo "build-image: error: $*" >&2; exit 1; }

# Elapsed seconds since the script started, with two decimals.
T0="$(date +%s.%N)"
readonly T0
elapsed() { awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.2f", t1 - t0 }'; }
step() { echo "build-image: [$(elapsed)s] $*"; }

need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag)               need_arg "$@"; tag="$2"; shift 2 ;;
        --claude-code)       need_arg "$@"; claude_code="$2"; shift 2 ;;
        --base-image)        need_arg "$@"; base_image="$2"; shift 2 ;;
        --cache-dir)         need_arg "$@"; cache_dir="$2"; shift 2 ;;
        --convocate-version) need_arg "$@"; convocate_version="$2"; shift 2 ;;
        --mirror)            need_arg "$@"; mirror="$2"; shift 2 ;;
        --force)             force=1; shift ;;
        --print-build)       print_build=1; shift ;;
        -h|--help)           usage; exit 0 ;;
        *)                   usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -n "$tag" ]] || { usage >&2; die "--tag is required"; }
if [[ -z "$claude_code" ]]; then
    [[ -r "$PIN_FILE" ]] || die "the Claude Code pin $PIN_FILE is missing"
    claude_code="$(tr -d '[:space:]' <"$PIN_FILE")"
    [[ "$claude_code" =~ $SEMVER_RE ]] \
        || die "$PIN_FILE must hold one version like X.Y.Z, got '$claude_code'"
fi
[[ "$claude_code" == none || "$claude_code" =~ $SEMVER_RE ]] \
    || die "--claude-code must be a version like X.Y.Z or 'none', got '$claude_code'"

if [[ -z "$convocate_version" ]]; then
    convocate_version="$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' \
        "${REPO_DIR}/pyproject.toml" 2>/dev/null | head -n1)"
fi
if [[ -z "$convocate_version" ]]; then
    # pyproject.toml takes the version dynamically from the package.
    convocate_version="$(sed -n 's/^__version__[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' \
        "${REPO_DIR}/convocate/common/version.py" 2>/dev/null | head -n1)"
fi
convocate_version="${convocate_version:-unknown}"

if [[ -z "${DOCKER:-}" ]]; then
    if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
command -v "$DOCKER" >/dev/null 2>&1 || die "docker client '$DOCKER' not found"
docker() { command "$DOCKER" "$@"; }

step "checking the Docker daemon"
if ! server_version="$(docker version --format '{{.Server.Version}}' 2>&1)"; then
    die "cannot reach the Docker daemon (${DOCKER_HOST:-unix:///var/run/docker.sock}): ${server_version##*$'\n'}"
fi
step "Docker ${server_version} reachable"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# --- Debian mirror -----------------------------------------------------------

# Print "URI SUITE" for every deb source the host's apt configuration lists
# (deb822 *.sources files and one-line sources.list files).
host_apt_sources() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        # Stanzas are separated by blank lines; fields may repeat per stanza.
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && enabled != "no")
                    for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]
                types = ""; enabled = ""; nu = 0; ns = 0
            }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            {
                key = tolower($1); sub(/:$/, "", key)
                $1 = ""; sub(/^[[:space:]]+/, "")
                if (key == "types") types = $0
                else if (key == "enabled") enabled = tolower($0)
                else if (key == "uris") nu = split($0, u, /[[:space:]]+/)
                else if (key == "suites") ns = split($0, s, /[[:space:]]+/)
            }
            END { flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r "$f" ]] || continue
        # deb [options] URI SUITE COMPONENTS...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $2, $3 }'
    done
}

# Sets mirror (if not given), updates_mirror and security_mirror.
updates_mirror=""
security_mirror=""
pick_mirrors() {
    local uri suite
    while read -r uri suite; do
        uri="${uri%/}"
        case "$suite" in
            "$SUITE")            [[ -n "$mirror" ]] || mirror="$uri" ;;
            "$SUITE-updates")    [[ -n "$updates_mirror" ]] || updates_mirror="$uri" ;;
            "$SUITE-security"|"$SUITE/updates") [[ -n "$security_mirror" ]] || security_mirror="$uri" ;;
        esac
    done < <(host_apt_sources)
    mirror="${mirror:-$DEFAULT_MIRROR}"
}

# --- Base image --------------------------------------------------------------

build_base_image() {
    local name="$1"
    local arch tarball
    arch="$(dpkg --print-architecture 2>/dev/null || uname -m)"
    tarball="${cache_dir}/convocate-base-${SUITE}-${arch}.tar"

    if image_exists "$name"; then
        step "base image $name exists, reusing it"
        return
    fi
    mkdir -p "$cache_dir"
    if [[ -s "$tarball" ]]; then
        step "reusing cached rootfs $tarball"
    else
        [[ $EUID -eq 0 ]] || die "debootstrap needs root to build the base image (or pass --base-image)"
        command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install debootstrap)"
        pick_mirrors
        local rootfs
        rootfs="$(mktemp -d "${cache_dir}/rootfs.XXXXXX")"
        # shellcheck disable=SC2064  # expand now: the trap must remove this rootfs
        trap "rm -rf '$rootfs' '$tarball.part'" EXIT
        step "debootstrap --variant=minbase $SUITE from $mirror (takes about half a minute)"
        if ! debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"${rootfs}.log" 2>&1; then
            tail -n 20 "${rootfs}.log" >&2
            rm -f "${rootfs}.log"
            die "debootstrap failed"
        fi
        rm -f "${rootfs}.log"

        step "configuring apt in the rootfs (mirror ${mirror}${updates_mirror:+, updates}${security_mirror:+, security})"
        {
            echo "deb ${mirror} ${SUITE} main"
            [[ -z "$updates_mirror" ]] || echo "deb ${updates_mirror} ${SUITE}-updates main"
            [[ -z "$security_mirror" ]] || echo "deb ${security_mirror} ${SUITE}-security main"
        } >"${rootfs}/etc/apt/sources.list"
        cat >"${rootfs}/etc/apt/apt.conf.d/90convocate" <<'EOF'
// convocate base image: small installs, no translations.
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
        # Docker images never start services from maintainer scripts.
        printf '#!/bin/sh\nexit 101\n' >"${rootfs}/usr/sbin/policy-rc.d"
        chmod 0755 "${rootfs}/usr/sbin/policy-rc.d"
        # debootstrap copies the host's resolver and name; Docker provides its own.
        : >"${rootfs}/etc/resolv.conf"
        echo localhost >"${rootfs}/etc/hostname"

        step "cleaning apt caches and lists in the rootfs"
        rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/cache/apt/*.bin \
               "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/log/*.log
        mkdir -p "${rootfs}/var/lib/apt/lists/partial"

        step "writing rootfs tarball $tarball"
        tar --numeric-owner -C "$rootfs" -cf "${tarball}.part" .
        mv "${tarball}.part" "$tarball"
        rm -rf "$rootfs"
        trap - EXIT
    fi

    step "docker import $tarball as $name"
    docker import --change 'CMD ["/bin/bash"]' --change 'LABEL convocate.base=1' \
        "$tarball" "$name" >/dev/null
}

if [[ -n "$base_image" ]]; then
    image_exists "$base_image" \
        || die "base image '$base_image' not found in the local Docker (nothing can be pulled here)"
    step "using base image $base_image"
elif [[ $print_build -eq 1 ]]; then
    base_image="$DEFAULT_BASE_IMAGE"
    image_exists "$base_image" || die "--print-build: base image $base_image is not built yet (it does not build it)"
else
    base_image="$DEFAULT_BASE_IMAGE"
    build_base_image "$base_image"
fi
base_id="$(docker image inspect --format '{{.Id}}' "$base_image")"

# --- Session image -----------------------------------------------------------

for f in "${CONTEXT_FILES[@]}"; do
    [[ -f "${SCRIPT_DIR}/$f" ]] || die "missing build context file ${SCRIPT_DIR}/$f"
done

# Hash of everything that decides the image: the context files (names, modes
# and contents), the build args, the base image ID and the labels.
context_hash="$(
    cd "$SCRIPT_DIR"
    {
        sha256sum "${CONTEXT_FILES[@]}"
        stat -c '%a %n' "${CONTEXT_FILES[@]}"
        echo "BASE_IMAGE=${base_image} ${base_id}"
        echo "CLAUDE_CODE_VERSION=${claude_code}"
        echo "convocate.version=${convocate_version}"
    } | sha256sum | cut -c1-32
)"

build_args=(--build-arg "BASE_IMAGE=${base_image}" --build-arg "CLAUDE_CODE_VERSION=${claude_code}")
labels=(convocate.image=1 "convocate.version=${convocate_version}" "convocate.claude-code=${claude_code}"
    "convocate.context-hash=${context_hash}")

if [[ $print_build -eq 1 ]]; then
    # What the build would use, one KEY=VALUE per line (tests read it; nothing is built).
    echo "tag=${tag}"
    echo "claude_code=${claude_code}"
    echo "pin_file=${PIN_FILE}"
    for ((i = 1; i < ${#build_args[@]}; i += 2)); do echo "build_arg=${build_args[i]}"; done
    for l in "${labels[@]}"; do echo "label=${l}"; done
    echo "context_hash=${context_hash}"
    exit 0
fi

old_id=""
if image_exists "$tag"; then
    old_id="$(docker image inspect --format '{{.Id}}' "$tag")"
    old_hash="$(docker image inspect \
        --format '{{index .Config.Labels "convocate.context-hash"}}' "$tag" 2>/dev/null || true)"
    if [[ $force -eq 0 && "$old_hash" == "$context_hash" ]]; then
        step "image $tag is up to date (context hash $context_hash), skipping the build"
        step "done in $(elapsed)s: $tag $(docker image inspect --format '{{.Size}}' "$tag" \
            | awk '{ printf "%.0f MB", $1 / 1e6 }')"
        exit 0
    fi
fi

for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [[ -z "${!v:-}" ]] || build_args+=(--build-arg "$v=${!v}")
done

# The build runs from a temporary copy of the context, to which the host's CA
# bundle is added (as build-ca-certificates.crt) so that npm inside the build
# trusts what the host trusts, e.g. a TLS-inspecting proxy. It only serves the
# npm fetch in the first stage; the session image does not contain it.
context_dir="$(mktemp -d "${TMPDIR:-/tmp}/convocate-image-context.XXXXXX")"
build_log="${context_dir}.log"
trap 'rm -rf "$context_dir" "$build_log"' EXIT
(cd "$SCRIPT_DIR" && cp -p --parents "${CONTEXT_FILES[@]}" "$context_dir/")
: >"${context_dir}/build-ca-certificates.crt"
for ca in /etc/ssl/certs/ca-certificates.crt "${NODE_EXTRA_CA_CERTS:-}"; do
    [[ -n "$ca" && -r "$ca" ]] || continue
    cat "$ca" >>"${context_dir}/build-ca-certificates.crt"
done

step "docker build $tag (FROM $base_image, Claude Code ${claude_code})"
if ! DOCKER_BUILDKIT=0 docker build --force-rm \
        "${build_args[@]}" \
        "${labels[@]/#/--label=}" \
        --tag "$tag" \
        "$context_dir" >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    die "docker build of $tag failed (last 40 lines above)"
fi
# One line per Dockerfile step that did work, and what the npm step reported.
grep -E '^(Step [0-9]+/[0-9]+ : (FROM|RUN|COPY)|node v|claude --version|mcp [0-9])' "$build_log" \
    | sed 's/^/build-image:     /' | cut -c1-120 || true

new_id="$(docker image inspect --format '{{.Id}}' "$tag")"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
    # The previous build of this tag is now untagged; drop it unless a
    # container still uses it.
    docker image rm "$old_id" >/dev/null 2>&1 || true
fi

# Untagged images built from an earlier base image (the first stage's result,
# ~900 MB with Node.js) are build cache nothing can use any more: remove them.
# Those from the current base stay, so the next build reuses the npm step.
# They carry the base image's label convocate.base=1.
descends_from_base() {
    local id="$1"
    while [[ -n "$id" ]]; do
        [[ "$id" != "$base_id" ]] || return 0
        id="$(docker image inspect --format '{{.Parent}}' "$id" 2>/dev/null || true)"
    done
    return 1
}
while read -r stale; do
    [[ -n "$stale" ]] || continue
    if ! descends_from_base "$stale" && docker image rm "$stale" >/dev/null 2>&1; then
        step "removed stale build cache image ${stale#sha256:}"
    fi
done < <(docker images --no-trunc --quiet --filter dangling=true --filter label=convocate.base=1)
step "done in $(elapsed)s: $tag $(docker image inspect --format '{{.Size}}' "$tag" \
    | awk '{ printf "%.0f MB", $1 / 1e6 }') (context hash $context_hash)"
