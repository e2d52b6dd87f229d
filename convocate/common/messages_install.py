"""Message texts of the install steps (DESIGN §7).

Each constant is a ``str.format`` template; the placeholders are named. Import them through
:mod:`convocate.common.messages`.
"""

# --- install steps (DESIGN §7) -----------------------------------------------------
DOCKER_UNREACHABLE = (
    "Docker is not reachable ({detail}). The agent runs every session as a Docker container: install"
    " docker.io (or docker-ce), start it (systemctl start docker), then run `convocate-agent install` again"
)
NO_DOCKER_GROUP = (
    "group docker does not exist: convocate-agent.service reaches dockerd through it"
    " (SupplementaryGroups=docker); install docker.io or docker-ce"
)
ACCOUNT_ID_MISMATCH = (
    "{kind} {name} exists with {id_name} {actual}; convocate needs {id_name} {wanted} (session containers run as"
    " {wanted}): change it (usermod/groupmod) or remove the {kind}, then run the install again"
)
ACCOUNT_ID_TAKEN = (
    "{id_name} {wanted} belongs to {kind} {other}; convocate needs it for its {kind} {name}:"
    " free it, then run the install again"
)
COMMAND_FAILED = "{what}: `{command}` exited with status {status}: {detail}"
BAD_INSTALL_PORT = "{option}: {value!r} is not a port number (1-65535)"
BAD_INSTALL_HOST = "{option}: {value!r} is not a host name or an IP address"
IMAGE_NOT_BUILT = (
    "the session image {tag} was not built: {reason}. Install Docker (docker.io or docker-ce) and run"
    " `convocate install` again, or build it later with: {command}"
)
LISTEN_PORT_IN_USE = (
    "TCP port {port} is in use by {who}, so {unit} cannot listen there: stop that program, or choose"
    " another port with dpkg-reconfigure"
)
DEFAULTS_BY_DEBCONF = (
    "{path} holds debconf answers that the {package} package writes (with ucf): change them with"
    " `dpkg-reconfigure {package}`"
)
IMAGE_NOT_YET = "no session image yet: {tag} is not there because {reason}; {retry}"
IMAGE_BUILD_RETRY = (
    "build it with `sudo systemctl start {unit}` (follow it with `journalctl -fu {unit}`)"
    " or in the foreground with `sudo convocate install --image`"
)
IMAGE_BUILD_FOLLOW = "follow it with `journalctl -fu {unit}`"
IMAGE_BUILD_STARTED = (
    "the session image is built in the background by {unit}: follow it with `journalctl -fu {unit}`;"
    " `convocate image-status` says when it is ready"
)
IMAGE_CONTEXT_MISSING = (
    "the session image's build context {path} is missing: reinstall the convocate package, or pass"
    " --image-context DIR (or --no-image)"
)
IMAGE_BUILD_FAILED = (
    "building the session image {tag} failed (build-image.sh exited with status {status}; its output is above);"
    " retry with `sudo convocate install --image` (or `sudo systemctl start convocate-image-build`);"
    " `--base-image IMAGE` builds from a local base image"
)
