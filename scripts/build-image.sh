#!/usr/bin/env bash
# Build the test image cube-busybox:latest from the host's static busybox binary.
#
# No registry pull is possible on Cube's machines, so the image is made from a
# root filesystem assembled here and handed to `docker import`: /bin/busybox, one
# symlink per applet (sh, sleep, httpd, nc, ...), /tmp, /etc and /www/index.html
# so that `httpd -f -p 8080 -h /www` serves a page.
#
# Usage: scripts/build-image.sh [--rebuild]
#   --rebuild   build even if the image already exists
# Environment:
#   CUBE_TEST_IMAGE  image tag to build (default cube-busybox:latest)
#   BUSYBOX          path of a statically linked busybox (default: found on PATH)
set -euo pipefail

image="${CUBE_TEST_IMAGE:-cube-busybox:latest}"
# Stored as the image's comment; bump it when the image's content changes, so that
# machines holding an older build (CI reuses them) rebuild it.
version="cube-busybox v2: static busybox, applet links, /www/index.html, /etc/passwd"
rebuild=0
for arg in "$@"; do
    case "$arg" in
        --rebuild) rebuild=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "build-image: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

log() { echo "build-image: $*"; }

if [[ $rebuild -eq 0 ]]; then
    if comment="$(docker image inspect --format '{{.Comment}}' "$image" 2>/dev/null)"; then
        if [[ "$comment" == "$version" ]]; then
            log "image $image present"
            exit 0
        fi
        log "image $image is an older build; rebuilding"
    fi
fi

# A dynamically linked busybox would not run in an image without a libc.
is_static() {
    local out
    out="$(LC_ALL=C ldd "$1" 2>&1 || true)"
    [[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]]
}

busybox=""
for candidate in "${BUSYBOX:-}" /bin/busybox /usr/bin/busybox "$(command -v busybox || true)"; do
    if [[ -n "$candidate" && -x "$candidate" ]] && is_static "$candidate"; then
        busybox="$candidate"
        break
    fi
done
if [[ -z "$busybox" ]]; then
    echo "build-image: no static busybox found: install busybox-static (Debian/Ubuntu)" \
        "or set BUSYBOX=/path/to/static/busybox" >&2
    exit 1
fi

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT

mkdir -p "$rootfs"/{bin,etc,tmp,www,root,proc,sys,dev}
chmod 1777 "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
chmod 0755 "$rootfs/bin/busybox"
applets=0
while IFS= read -r applet; do
    [[ -z "$applet" || "$applet" == busybox ]] && continue
    ln -s busybox "$rootfs/bin/$applet"
    applets=$((applets + 1))
done < <("$busybox" --list)

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' \
    >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
cat >"$rootfs/www/index.html" <<'HTML'
<!doctype html>
<title>cube</title>
<p>Hello from a Cube task.</p>
HTML

log "importing $image ($applets applets from $busybox)"
tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -c . |
    docker import -m "$version" -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$image" >/dev/null
log "built $image"
