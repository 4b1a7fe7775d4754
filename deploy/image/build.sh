#!/usr/bin/env bash
# Builds the server's image (deploy/Containerfile) with podman, runs it, checks it, stops it.
#
# No container registry is needed: the base is a plain Debian bookworm made with debootstrap from
# the Debian mirror (cached as a tarball, then reused), and the Containerfile installs Python into
# it. Then: the image runs, answers /readyz, runs one turn on the offline model, drains on SIGTERM.
# Prints one line; exits non-zero on the first failure (with the container's log).
#
# As root on Debian bookworm (installs podman, debootstrap and python3 with apt-get if missing);
# no stdin needed. Settings (environment):
#   IMAGE          the tag built                     (localhost/claude-sessions:dev)
#   BASE_IMAGE     an image already in podman's store (python:3.11-slim-bookworm, ...) instead
#                  of the debootstrap base           (localhost/debian-bookworm-base:latest)
#   CACHE_DIR      where the base's tarball is kept   (/var/cache/claude-sessions)
#   DEBIAN_MIRROR  the Debian mirror                 (the first of apt's, else deb.debian.org)
#   PORT           the host's loopback port          (18000)
#   READY_PATH     the readiness probe               (/readyz)
#   KEEP=1         leave the container running at the end (it is named claude-sessions-image-check)
#   BUILD_ONLY=1   build, do not run
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-localhost/claude-sessions:dev}
DEFAULT_BASE=localhost/debian-bookworm-base:latest
BASE_IMAGE=${BASE_IMAGE:-$DEFAULT_BASE}
CACHE_DIR=${CACHE_DIR:-/var/cache/claude-sessions}
PORT=${PORT:-18000}
READY_PATH=${READY_PATH:-/readyz}
READY_TIMEOUT=120
NAME=claude-sessions-image-check
KEY=sk-image-check
ADMIN_KEY=sk-image-check-admin
export DEBIAN_FRONTEND=noninteractive
start=$SECONDS

say() { printf 'build.sh: %s\n' "$*" >&2; }
fail() {
    say "FAILED: $*"
    if podman container exists "$NAME" 2>/dev/null; then
        say "the container's log:"
        podman logs "$NAME" 2>&1 | tail -40 >&2 || true
    fi
    exit 1
}

[ "$(id -u)" = 0 ] || fail "run as root (podman, debootstrap)"

need=()
command -v podman >/dev/null || need+=(podman)
command -v python3 >/dev/null || need+=(python3)
if [ "$BASE_IMAGE" = "$DEFAULT_BASE" ]; then command -v debootstrap >/dev/null || need+=(debootstrap); fi
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# The mirror apt uses here (a deb822 URIs line or a one-line "deb" entry), else Debian's own.
mirror() {
    local found
    found=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '$1 == "URIs:" && $2 !~ /security/ {print $2; exit}') || true
    [ -n "$found" ] || found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/ && $i !~ /security/) {print $i; exit}}') || true
    echo "${found:-http://deb.debian.org/debian}"
}

# A minimal Debian bookworm, from the mirror: a tarball in CACHE_DIR, imported into podman's store.
make_base() {
    local tarball=$CACHE_DIR/debian-bookworm-minbase.tar mirror_url root
    if [ ! -s "$tarball" ]; then
        mirror_url=${DEBIAN_MIRROR:-$(mirror)}
        say "debootstrap bookworm (minbase) from $mirror_url into $tarball"
        mkdir -p "$CACHE_DIR"
        root=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
        # shellcheck disable=SC2064  # expand now: the trap outlives this function's locals
        trap "rm -rf '$root'" EXIT
        debootstrap --variant=minbase bookworm "$root" "$mirror_url" >"$CACHE_DIR/debootstrap.log" 2>&1 ||
            fail "debootstrap (see $CACHE_DIR/debootstrap.log)"
        # Updates and security fixes too, as in Debian's own images; no package lists or .debs kept.
        cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror_url bookworm main
deb $mirror_url bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
        rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
        tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$root"
        trap - EXIT
    fi
    say "importing $tarball as $BASE_IMAGE"
    podman import --quiet "$tarball" "$BASE_IMAGE" >/dev/null
}

# podman's defaults fail on some hosts: crun refuses a hybrid cgroup layout with a controller on the
# v2 hierarchy ("cgroups in hybrid mode not supported"), and without CAP_SYS_RESOURCE the default
# ulimits (nofile and nproc 1048576) cannot be set ("setrlimit RLIMIT_NOFILE: Operation not
# permitted"). Then runc with ulimits the host allows, in a containers.conf of our own (CONTAINERS_CONF).
podman_setup() {
    local probe=(run --rm --network=none "$BASE_IMAGE" true) error conf=$CACHE_DIR/containers.conf nofile nproc
    error=$(podman "${probe[@]}" 2>&1) && return 0
    say "podman cannot run a container with its defaults here: ${error##*Error: }"
    command -v runc >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q runc >/dev/null; }
    nofile=$(ulimit -Hn)
    [ "$nofile" != unlimited ] || nofile=1048576
    for nproc in $(ulimit -Hu) 32768 4096; do
        [ "$nproc" != unlimited ] || continue
        mkdir -p "$CACHE_DIR"
        printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\nruntime = "runc"\n' \
            "$nofile" "$nofile" "$nproc" "$nproc" >"$conf"
        if error=$(CONTAINERS_CONF=$conf podman "${probe[@]}" 2>&1); then
            export CONTAINERS_CONF=$conf
            say "using runc, nofile=$nofile, nproc=$nproc ($conf)"
            return 0
        fi
    done
    fail "podman cannot run a container here, runc neither: ${error##*Error: }"
}

if ! podman image exists "$BASE_IMAGE"; then
    [ "$BASE_IMAGE" = "$DEFAULT_BASE" ] || fail "$BASE_IMAGE is not in podman's store (podman pull or podman load it)"
    make_base
fi
podman_setup
base_done=$SECONDS

# Behind a TLS-intercepting proxy the builder reaches PyPI only with this host's CA bundle.
ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
secret=()
[ ! -s "$ca_bundle" ] || secret=(--secret "id=ca-certificates,src=$ca_bundle")

say "building $IMAGE on $BASE_IMAGE"
# --format docker: the OCI format has no HEALTHCHECK. --layers: later builds reuse the dependencies' layer.
podman build --format docker --layers "${secret[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    -f deploy/Containerfile -t "$IMAGE" . \
    >"${TMPDIR:-/tmp}/claude-sessions-image-build.log" 2>&1 ||
    { tail -40 "${TMPDIR:-/tmp}/claude-sessions-image-build.log" >&2; fail "podman build"; }
build_done=$SECONDS
size=$(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1 / 1000000}')
if [ "${BUILD_ONLY:-}" = 1 ]; then
    echo "image OK: $IMAGE ($size) built on $BASE_IMAGE in $((build_done - start)) s (base $((base_done - start)) s)"
    exit 0
fi

podman rm -f -v "$NAME" >/dev/null 2>&1 || true
[ "${KEEP:-}" = 1 ] || trap 'podman rm -f -v "$NAME" >/dev/null 2>&1 || true' EXIT
say "running it on 127.0.0.1:$PORT (offline model)"
# (podman without systemd says on stderr that it cannot schedule the health checks: shown on failure only.)
run_log=$(podman run -d --name "$NAME" -p "127.0.0.1:$PORT:8000" \
    -e "API_KEYS=check:$KEY" -e "ADMIN_API_KEY=$ADMIN_KEY" "$IMAGE" serve --offline 2>&1) ||
    fail "podman run: $run_log"

# Ready within READY_TIMEOUT seconds, then one turn: a session, a message, the offline model's answer.
python3 - "http://127.0.0.1:$PORT" "$READY_PATH" "$READY_TIMEOUT" "$KEY" <<'EOF' || fail "readiness or the offline turn"
import json, sys, time, urllib.error, urllib.request

base, ready_path, timeout, key = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

def call(method, path, body=None, headers=auth, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read() or b"null")

started, last = time.monotonic(), None
while True:
    try:
        status, body = call("GET", ready_path, timeout=5)
        if status == 200:
            break
    except (OSError, urllib.error.URLError, ValueError) as error:
        last = error
    if time.monotonic() - started > timeout:
        sys.exit(f"not ready at {ready_path} within {timeout:.0f} s (last: {last!r})")
    time.sleep(1)
ready = time.monotonic() - started
status, session = call("POST", "/v1/sessions", {})
assert status in (200, 201), (status, session)
sid = session["session_id"]
turn_start = time.monotonic()
status, reply = call("POST", f"/v1/sessions/{sid}/messages?stream=false", {"content": "hello"}, timeout=120)
assert status == 200 and "hello" in (reply.get("text") or ""), (status, reply)
print(f"ready in {ready:.1f} s, turn in {time.monotonic() - turn_start:.1f} s", file=sys.stderr)
EOF
podman healthcheck run "$NAME" >/dev/null 2>&1 || fail "the image's HEALTHCHECK: $(podman healthcheck run "$NAME" 2>&1)"
checked=$SECONDS

stop_log=$(podman stop -t 30 "$NAME" 2>&1) || fail "podman stop: $stop_log"
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
logs=$(podman logs "$NAME" 2>&1)  # (not piped into grep -q: with pipefail, its early exit fails the pipe)
grep -q '"server_draining"' <<<"$logs" || fail "no server_draining in the log after SIGTERM"
# 143: uvicorn re-raises the SIGTERM it caught once it has shut down (tini passes the status on).
[ "$exit_code" = 0 ] || [ "$exit_code" = 143 ] || fail "the server exited with $exit_code after SIGTERM"

echo "image OK: $IMAGE ($size) on $BASE_IMAGE: base $((base_done - start)) s, build $((build_done - base_done)) s," \
    "ready + offline turn + health check $((checked - build_done)) s, drained on SIGTERM (exit $exit_code); total $((SECONDS - start)) s"
