#!/usr/bin/env bash
# Builds docker/Dockerfile's cpu target with podman (runc) on a Debian bookworm minbase made by debootstrap and
# imported as localhost/debian-bookworm-minbase (no image registry), then, inside the container: trains the example
# (examples/train_digits.py --out /models), converts /models/resnet_q.pt (exit 0 and PASS) and converts a text file
# named .pt (exit 2, one-line error). Prints the timings and the image size. Needs root (CI runs as root).
#
#   bash docker/test-cpu-image.sh              reuse the imported base and podman's layer cache where present
#   bash docker/test-cpu-image.sh --rebuild    remove the image, build it again with --no-cache (CI; base reused)
#   bash docker/test-cpu-image.sh --rebase     also debootstrap and import the base again
#
# Environment: QDQ_DOCKER_WORK (work folder, default /var/tmp/qdq_bridge-docker), DEBIAN_MIRROR (default: the
# first Debian URI of this machine's apt sources), PIP_CA (CA bundle handed to pip as a build secret, default
# $PIP_CERT or /etc/ssl/certs/ca-certificates.crt; it is not stored in the image).
# A machine whose kernel or sandbox cannot run containers makes this script fail, not skip.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=localhost/debian-bookworm-minbase
IMAGE=localhost/qdq_bridge:cpu
WORK=${QDQ_DOCKER_WORK:-/var/tmp/qdq_bridge-docker}
REBUILD=0 REBASE=0
for arg in "$@"; do
    case $arg in
        --rebuild) REBUILD=1 ;;
        --rebase) REBUILD=1 REBASE=1 ;;
        *) echo "usage: $0 [--rebuild] [--rebase]" >&2; exit 64 ;;
    esac
done

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }
now() { date +%s; }
declare -A SECONDS_OF=()
timed() {  # timed NAME COMMAND...: runs it, records its wall time
    local name=$1 start rc=0
    shift
    start=$(now)
    "$@" || rc=$?
    SECONDS_OF[$name]=$(($(now) - start))
    return "$rc"
}
T0=$(now)

[ "$(id -u)" -eq 0 ] || fail "run as root: rootful podman and debootstrap (CI runs as root)"

step "tools: podman, runc, debootstrap"
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
SECONDS_OF[tools]=0
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian"
    install_tools() {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
    }
    timed tools install_tools || fail "apt-get could not install podman, runc and debootstrap"
fi
# podman's settings for this script only (CONTAINERS_CONF), nothing written to /etc: runc (crun fails on these
# machines: "cgroups in hybrid mode not supported") and container limits no higher than this shell's hard ones
# nor than values seen to work here (nofile 20000, nproc 32768; nproc 65536 failed under a host limit of 96365):
# above them runc fails with "error setting rlimit ... operation not permitted".
mkdir -p "$WORK"
limit() { local host=$1 cap=$2; if [ "$host" = unlimited ] || [ "$host" -gt "$cap" ]; then echo "$cap"; else echo "$host"; fi; }
nofile=$(limit "$(ulimit -Hn)" 20000) nproc=$(limit "$(ulimit -Hu)" 32768)
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$WORK/containers.conf
podman --version
runc --version | head -1

if ! out=$(podman info 2>&1); then
    echo "$out" | tail -5 >&2
    fail "podman does not work on this machine (podman info, above), so no container can run here"
fi

debian_mirror() {  # the first Debian archive URI (not -security) of apt's sources, one-line or deb822
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' \
        | grep -v -- '-security' | head -1 || true)
    if [ -z "$uri" ]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | sed 's/\[[^]]*\]//' \
            | awk '$1 == "deb" { print $2 }' | grep -v -- '-security' | head -1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

step "base image $BASE_IMAGE"
if [ "$REBASE" = 1 ]; then
    if podman image exists "$IMAGE"; then podman rmi -f "$IMAGE" >/dev/null; fi
    if podman image exists "$BASE_IMAGE"; then podman rmi -f "$BASE_IMAGE" >/dev/null; fi
fi
if podman image exists "$BASE_IMAGE"; then
    echo "reusing $BASE_IMAGE (--rebase makes it again)"
    SECONDS_OF[base]=0
else
    MIRROR=${DEBIAN_MIRROR:-$(debian_mirror)}
    echo "debootstrap --variant=minbase bookworm from $MIRROR"
    make_base() {
        rm -rf "$WORK/rootfs"
        debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
            || { tail -20 "$WORK/debootstrap.log"; return 1; }
        tar -C "$WORK/rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
        rm -rf "$WORK/rootfs"
    }
    timed base make_base || fail "could not make the base image (debootstrap log: $WORK/debootstrap.log)"
fi

step "can this machine run a container?"
if ! out=$(podman run --rm "$BASE_IMAGE" /bin/true 2>&1); then
    echo "$out" >&2
    fail "this machine's kernel or sandbox cannot run containers with podman + runc (error above)"
fi
echo "yes: podman run --rm $BASE_IMAGE /bin/true exited 0"

step "build $IMAGE (target cpu)"
CA=${PIP_CA:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
secret=()
[ -s "$CA" ] && secret=(--secret "id=pip-ca,src=$CA")
cache=()
if [ "$REBUILD" = 1 ]; then
    # no layer cache read or written, and the old image goes first: repeated rebuilds leave no 6 GB images behind
    cache=(--no-cache --layers=false)
    if podman image exists "$IMAGE"; then podman rmi -f "$IMAGE" >/dev/null; fi
fi
echo "podman build --format docker -f docker/Dockerfile --target cpu --build-arg BASE=$BASE_IMAGE ${secret[*]} ${cache[*]} -t $IMAGE ."
timed build podman build --format docker -f docker/Dockerfile --target cpu --build-arg "BASE=$BASE_IMAGE" "${secret[@]}" \
    "${cache[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "podman build failed"; }
grep -E '^(STEP|torch )' "$WORK/build.log" | cut -c1-150
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
human=$(awk -v b="$size" 'BEGIN { printf "%.2f GB, %.2f GiB", b / 1e9, b / 2^30 }')
echo "image size: $size bytes ($human)"
podman run --rm --entrypoint id "$IMAGE" | sed 's/^/runs as: /'
# no build tools or caches left (looked for as root, which can read /root)
leftovers=$(podman run --rm --user 0 --entrypoint /bin/sh "$IMAGE" -c 'for tool in gcc cc make; do command -v $tool; done
    ls -d /root/.cache/pip /var/lib/apt/lists/*_Packages /var/cache/apt/archives/*.deb /tmp/src 2>/dev/null; true')
[ -z "$leftovers" ] || fail "left in the image: $leftovers"
echo "no compiler, no make, no pip cache, no apt lists, no .deb files, no source copy"

MODELS=$WORK/models
rm -rf "$MODELS"
mkdir -p "$MODELS"
chown 10001:10001 "$MODELS"  # the image's user writes the outputs next to the model

step "train the example inside the container"
timed train podman run --rm -v "$MODELS:/models" -e TQDM_DISABLE=1 --entrypoint python "$IMAGE" \
    /opt/qdq_bridge/examples/train_digits.py --out /models || fail "training in the container failed"
[ -s "$MODELS/resnet_q.pt" ] || fail "training wrote no $MODELS/resnet_q.pt"

step "podman run --rm -v $MODELS:/models $IMAGE /models/resnet_q.pt"
rc=0
timed convert podman run --rm -v "$MODELS:/models" "$IMAGE" /models/resnet_q.pt >"$WORK/convert.log" 2>&1 || rc=$?
cat "$WORK/convert.log"
[ "$rc" -eq 0 ] || fail "convert exited $rc, not 0"
grep -q '^PASS$' "$WORK/convert.log" || fail "convert printed no PASS line"
ls -l "$MODELS/resnet_q_qdq"
[ -s "$MODELS/resnet_q_qdq/resnet_q.qdq.onnx" ] || fail "no resnet_q.qdq.onnx next to the model"

step "bad input: a text file named .pt"
echo "this is not a model" >"$MODELS/not_a_model.pt"
rc=0
podman run --rm -v "$MODELS:/models" "$IMAGE" /models/not_a_model.pt >"$WORK/bad.out" 2>"$WORK/bad.err" || rc=$?
echo "exit $rc; stdout: $(wc -l <"$WORK/bad.out") lines; stderr:"
cat "$WORK/bad.err"
[ "$rc" -eq 2 ] || fail "bad input exited $rc, not 2"
[ "$(wc -l <"$WORK/bad.err")" -eq 1 ] && grep -q '^error: ' "$WORK/bad.err" || fail "bad input: not a one-line error"

step "summary"
echo "install podman, runc, debootstrap: ${SECONDS_OF[tools]} s$([ "${SECONDS_OF[tools]}" = 0 ] && echo ' (present)')"
echo "base (debootstrap + import): ${SECONDS_OF[base]} s$([ "${SECONDS_OF[base]}" = 0 ] && echo ' (reused)')"
echo "build: ${SECONDS_OF[build]} s$([ "$REBUILD" = 1 ] && echo ' (--no-cache)')"
echo "train in container: ${SECONDS_OF[train]} s; convert in container: ${SECONDS_OF[convert]} s"
echo "image: $IMAGE, $human ($size bytes, podman image inspect)"
echo "total: $(($(now) - T0)) s"
echo "docker/test-cpu-image.sh: PASS"
