# shellcheck shell=bash
# Builds Kubetune's two images from the unchanged Dockerfiles with buildah, without Docker, and
# hands them to the real node's containerd.
#
# Sourced by hack/cluster.sh (`hack/cluster.sh images`, `make images`; `up` imports what is
# missing). Every image store lives under one cache folder, $IMAGE_DIR:
#   base/      python:3.11-slim-bookworm made here with mmdebstrap (Debian's python3.11), a tarball
#   storage/   buildah's containers-storage (layers of both builds; `--layers` reuses them)
#   oci/       one OCI layout per image, the hand-over format (blobs already there are reused)
#   containerd/ the real node's containerd root (images survive `down`, so `up` is quick)
#   digests    the manifest digest of each built image, one "name digest" line each
# The uv cache is mounted as an overlay (written in the build, never on the host), so nothing is
# downloaded twice; the host's CA bundle and a uv config with `system-certs = true` are mounted
# because outbound TLS here goes through an intercepting CA that uv would not trust otherwise.
# The store is capped at KUBETUNE_IMAGE_CACHE_GB; `prune_images` enforces it.

IMAGE_DIR=${KUBETUNE_IMAGE_DIR:-$KUBETUNE_CACHE/images}
IMAGE_CACHE_GB=${KUBETUNE_IMAGE_CACHE_GB:-40}
BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
BASE_TAR="$IMAGE_DIR/base/python-3.11-slim-bookworm.tar"
HOST_CA_BUNDLE=${KUBETUNE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
DEBIAN_MIRROR=${KUBETUNE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
REPO_ROOT=$(cd "$HACK_DIR/.." && pwd)

# The tags the chart's defaults expect (values.yaml: image.repository, defaults.trainerImage)
# at the chart's appVersion; the runtime image serves too (defaults.serverImage).
app_version() { awk -F'"' '/^appVersion:/ { print $2 }' "$REPO_ROOT/charts/kubetune/Chart.yaml"; }
operator_image() { echo "ghcr.io/kubetune/operator:$(app_version)"; }
trainer_image() { echo "ghcr.io/kubetune/trainer:$(app_version)"; }
# The sandbox ("pause") image of every pod: a static build of Kubernetes' own pause.c.
PAUSE_IMAGE=kubetune.local/pause:3.10

bah() {
  buildah --root "$IMAGE_DIR/storage" --runroot "$IMAGE_DIR/run" --storage-driver overlay "$@"
}

# python:3.11-slim-bookworm, made locally: Debian bookworm with Debian's python3.11 and pip, the
# way the official image lays it out where our Dockerfiles look (python/pip in /usr/local/bin,
# pip allowed to install system-wide). The rootfs tarball is cached; the image is re-made from it
# whenever the store lacks it (seconds).
ensure_base_image() {
  if [[ ! -s $BASE_TAR ]]; then
    info "base image: mmdebstrap of bookworm with python3.11 (once; cached in $BASE_TAR)"
    mkdir -p "$(dirname "$BASE_TAR")"
    # shellcheck disable=SC2016 # "$1" is mmdebstrap's: the root of the new tree
    local hook='rm -f "$1"/usr/lib/python3.11/EXTERNALLY-MANAGED; for n in python python3 python3.11; do ln -sf /usr/bin/python3.11 "$1/usr/local/bin/$n"; done; for n in pip pip3; do ln -sf /usr/bin/pip3 "$1/usr/local/bin/$n"; done; rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'
    mmdebstrap --variant=apt --mode=root --format=tar \
      --include=python3.11,python3-pip,python3-venv,ca-certificates,netbase,tzdata,passwd \
      --customize-hook="$hook" bookworm "$BASE_TAR.partial" \
      "deb $DEBIAN_MIRROR bookworm main" "deb $DEBIAN_MIRROR bookworm-updates main" \
      "deb ${DEBIAN_MIRROR%/debian}/debian-security bookworm-security main" \
      >"$LOG_DIR/mmdebstrap.log" 2>&1 || die "mmdebstrap failed; log: $LOG_DIR/mmdebstrap.log"
    mv "$BASE_TAR.partial" "$BASE_TAR"
  fi
  bah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1 && return 0
  local ctr
  ctr=$(bah from scratch)
  bah add "$ctr" "$BASE_TAR" / >/dev/null
  bah config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$ctr"
  bah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
}

# The pause image: `gcc -static` of pause.c from the pinned Kubernetes module (a few KB).
ensure_pause_image() {
  bah inspect --type image "$PAUSE_IMAGE" >/dev/null 2>&1 && return 0
  local src ctr tmp
  # `go mod download` (not `go list -m`): `make images` may run before, or beside, the Go build
  # that would otherwise fetch the module first.
  src="$(cd "$TOOLS_DIR" && GOTOOLCHAIN=local go mod download -json k8s.io/kubernetes |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')/build/pause/linux/pause.c"
  tmp=$(mktemp -d)
  gcc -Os -static -o "$tmp/pause" "$src" || die "gcc -static of $src failed (needs gcc and libc6-dev)"
  ctr=$(bah from scratch)
  bah copy "$ctr" "$tmp/pause" /pause >/dev/null
  bah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  bah commit --quiet --rm "$ctr" "$PAUSE_IMAGE" >/dev/null
  rm -rf "$tmp"
}

# build_image TAG DOCKERFILE [CONTEXT]: `buildah bud` of CONTEXT (the repository root; DOCKERFILE
# relative to it), layer cache on. Skipped when the tagged image exists and its inputs are those it
# was built from (inputs_hash: the Dockerfile, every file the build context lets in, the base
# image): buildah's own cache check re-reads the runtime image's 6 GB venv and takes minutes.
# The image the tag named before is removed when the build moves the tag (its layers that the
# new image shares stay). The step images this build used or made (its "--> ID" lines, kept in
# $IMAGE_DIR/steps/NAME) go into $IMAGE_DIR/keep.new: the layer cache the next build needs;
# prune_images drops the rest.
build_image() {
  local tag=$1 dockerfile=$2 context=${3:-$REPO_ROOT} uv_cache uv_toml="$IMAGE_DIR/uv-system.toml" old new log name hash
  name=$(basename "${tag%%:*}")
  log="$LOG_DIR/build-$name.log"
  mkdir -p "$IMAGE_DIR/steps" "$IMAGE_DIR/inputs"
  old=$(bah images --noheading --no-trunc --format '{{.ID}}' "$tag" 2>/dev/null || true)
  hash=$(inputs_hash "$context" "$dockerfile")
  if [[ -n $old && -s $IMAGE_DIR/steps/$name && $(cat "$IMAGE_DIR/inputs/$name" 2>/dev/null) == "$hash" ]]; then
    info "image $tag: inputs unchanged since its build, kept (${old#sha256:})"
    cat "$IMAGE_DIR/steps/$name" >>"$IMAGE_DIR/keep.new"
    return 0
  fi
  uv_cache=$(uv cache dir 2>/dev/null || echo "$HOME/.cache/uv")
  mkdir -p "$uv_cache"
  printf '# Mounted at /etc/uv/uv.toml in image builds: trust the host CA store.\nsystem-certs = true\n' >"$uv_toml"
  info "image $tag from $dockerfile (log: $log)"
  bah bud --isolation chroot --pull=never --layers \
    -v "$HOST_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" \
    -v "$uv_toml:/etc/uv/uv.toml:ro" -v "$uv_cache:/root/.cache/uv:O" \
    -f "$context/$dockerfile" -t "$tag" "$context" >"$log" 2>&1 ||
    { tail -n 30 "$log" >&2; bah rm --all >/dev/null 2>&1; die "buildah bud of $dockerfile failed"; }
  new=$(bah images --noheading --no-trunc --format '{{.ID}}' "$tag")
  { sed -nE 's/^--> (Using cache )?([0-9a-f]{11,64})$/\2/p' "$log"; echo "${new#sha256:}"; } >"$IMAGE_DIR/steps/$name"
  cat "$IMAGE_DIR/steps/$name" >>"$IMAGE_DIR/keep.new"
  echo "$hash" >"$IMAGE_DIR/inputs/$name"
  if [[ -n $old && $old != "$new" ]]; then bah rmi "$old" >/dev/null 2>&1 || true; fi
}

# inputs_hash CONTEXT DOCKERFILE: sha256 over the base image's ID, the Dockerfile and every file
# the context's .dockerignore lets in (its `!path` lines; all files without one), minus the
# caches it excludes (__pycache__, *.pyc, .mypy_cache, .pytest_cache, .ruff_cache).
inputs_hash() {
  local context=$1 dockerfile=$2 paths=()
  if [[ -f $context/.dockerignore ]]; then
    mapfile -t paths < <(sed -n 's|^!\(.*\)|\1|p' "$context/.dockerignore" | sed 's|/$||')
  else
    paths=(.)
  fi
  {
    bah images --noheading --no-trunc --format '{{.ID}}' "$BASE_IMAGE" 2>/dev/null || true
    cd "$context" && find "$dockerfile" "${paths[@]}" -type f \
      -not -path '*/__pycache__/*' -not -name '*.pyc' -not -path '*/.mypy_cache/*' \
      -not -path '*/.pytest_cache/*' -not -path '*/.ruff_cache/*' -print0 2>/dev/null |
      sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-64
}

# export_image TAG: into its OCI layout (blobs already there are not written again); records
# "TAG DIGEST IMAGE-ID" in $IMAGE_DIR/digests. An image exported before (same ID, manifest still
# in the layout) is skipped: buildah would re-read and re-compress every layer (minutes for the
# runtime image) only to find the same digest.
export_image() {
  local tag=$1 layout digest id
  layout="$IMAGE_DIR/oci/$(basename "${tag%%:*}")"
  id=$(bah images --noheading --no-trunc --format '{{.ID}}' "$tag")
  digest=$(recorded_digest "$tag")
  if [[ -n $digest && $(awk -v t="$tag" '$1 == t { print $3 }' "$IMAGE_DIR/digests") == "$id" &&
        -f $layout/blobs/${digest/://} ]]; then
    return 0
  fi
  mkdir -p "$layout"
  bah push --quiet --disable-compression "$tag" "oci:$layout:$tag" >/dev/null
  prune_layout "$layout" # the blobs of the manifest this push replaced
  digest=$(python3 -c 'import json,sys; i=json.load(open(sys.argv[1])); print([m["digest"] for m in i["manifests"] if m.get("annotations",{}).get("org.opencontainers.image.ref.name")==sys.argv[2]][-1])' "$layout/index.json" "$tag")
  touch "$IMAGE_DIR/digests"
  { grep -v "^$tag " "$IMAGE_DIR/digests" || true; echo "$tag $digest $id"; } >"$IMAGE_DIR/digests.new"
  mv "$IMAGE_DIR/digests.new" "$IMAGE_DIR/digests"
}

# recorded_digest TAG: the digest export_image recorded, or nothing.
recorded_digest() { [[ ! -f $IMAGE_DIR/digests ]] || awk -v t="$1" '$1 == t { print $2 }' "$IMAGE_DIR/digests"; }

# import_images CTR...: give containerd (its `ctr` command line in "$@") every exported image
# whose recorded digest it does not already hold under that tag. Streams the OCI layout; content
# containerd already has is skipped, so only changed layers are written and unpacked.
import_images() {
  local tag layout want have
  [[ -s $IMAGE_DIR/digests ]] || return 0
  while read -r tag want _; do
    layout="$IMAGE_DIR/oci/$(basename "${tag%%:*}")"
    have=$("$@" images ls "name==$tag" 2>/dev/null | awk 'NR > 1 { print $3 }')
    [[ $have == "$want" ]] && continue
    info "containerd: importing $tag ($want)"
    # Named by the layout's org.opencontainers.image.ref.name (the tag buildah pushed). Only the
    # blobs containerd lacks go into the stream (after a source change: a few KB, not the 6 GB
    # venv layer it holds already); should that fail, the whole layout.
    if ! layout_tar "$layout" "$@" | "$@" images import - >/dev/null 2>&1; then
      info "containerd: incremental import of $tag failed; importing the whole layout"
      tar -C "$layout" -cf - . | "$@" images import - >/dev/null
    fi
    have=$("$@" images ls "name==$tag" | awk 'NR > 1 { print $3 }')
    [[ $have == "$want" ]] || die "containerd holds $tag as ${have:-nothing}, expected $want"
  done <"$IMAGE_DIR/digests"
}

# layout_tar LAYOUT CTR...: a tar of the OCI layout with only the blobs containerd (its `ctr` in
# "$@") does not hold; `ctr images import` finds the others in its content store.
layout_tar() {
  local layout=$1 blob
  shift
  local held
  held=$("$@" content ls -q 2>/dev/null || true)
  (
    cd "$layout" && {
      echo oci-layout
      echo index.json
      for blob in blobs/sha256/*; do
        grep -qx "sha256:${blob##*/}" <<<"$held" || echo "$blob"
      done
    } | tar -cf - -T -
  )
}

# Keep the image cache under its cap (KUBETUNE_IMAGE_CACHE_GB, decimals allowed). Two rules:
# 1. stale step images go at once: untagged images that no step of the latest builds used or made
#    (the layers of a superseded uv.lock or of older sources; keep.new lists the used ones). The
#    untagged step images the latest builds used are the layer cache and stay (pruning every
#    "dangling" image, as `buildah rmi --prune` does, would delete the cache of a multi-stage build).
# 2. above the cap after that, the whole build store goes (the base tarball, the OCI layouts and
#    containerd's images stay; the next build starts again from the uv cache), and if the cache is
#    still above the cap, make images fails and says what holds the space.
prune_images() {
  local id kept=0 dropped=0
  bah rm --all >/dev/null 2>&1 || true # working containers a failed build left
  if [[ -s $IMAGE_DIR/keep.new ]]; then
    while read -r id; do
      if grep -q "^${id:0:11}" "$IMAGE_DIR/keep.new"; then
        kept=$((kept + 1))
      elif bah rmi "$id" >/dev/null 2>&1; then
        dropped=$((dropped + 1))
      fi
    done < <(bah images --all --noheading --no-trunc --filter dangling=true --format '{{.ID}}' | sed 's/^sha256://')
    mv "$IMAGE_DIR/keep.new" "$IMAGE_DIR/keep"
    info "layer cache: $dropped stale step images removed ($kept unreferenced ones kept: the latest builds used them)"
  fi
  if over_cap; then
    info "image cache $(cache_gb) GB > KUBETUNE_IMAGE_CACHE_GB=$IMAGE_CACHE_GB: dropping the build store"
    bah rmi --all --force >/dev/null 2>&1 || true
    local layout
    for layout in "$IMAGE_DIR"/oci/*/; do [[ -d $layout ]] && prune_layout "$layout"; done
    if over_cap; then
      cache_sizes >&2
      die "image cache $(cache_gb) GB is still above KUBETUNE_IMAGE_CACHE_GB=$IMAGE_CACHE_GB"
    fi
  fi
}

# Size of the image cache in KB, in GB (one decimal), and whether it is above the cap.
cache_kb() { du -sxk "$IMAGE_DIR" | cut -f1; }
cache_gb() { awk -v k="$(cache_kb)" 'BEGIN { printf "%.1f", k / 1048576 }'; }
over_cap() { awk -v k="$(cache_kb)" -v cap="$IMAGE_CACHE_GB" 'BEGIN { exit !(k > cap * 1048576) }'; }

# cache_sizes: one line per store of the image cache, and the total.
cache_sizes() {
  local dir
  for dir in base storage oci containerd; do
    [[ -d $IMAGE_DIR/$dir ]] && du -sxh "$IMAGE_DIR/$dir" | awk -v d="$dir" '{ printf "  %-11s %s\n", d, $1 }'
  done
  echo "  total       $(cache_gb) GB (cap KUBETUNE_IMAGE_CACHE_GB=$IMAGE_CACHE_GB)"
}

# prune_layout DIR: keep only the newest manifest per ref (tag) in an OCI layout and delete
# the blobs nothing references any more.
prune_layout() {
  python3 - "$1" <<'EOF'
import json, os, sys
root = sys.argv[1]
index_path = os.path.join(root, "index.json")
index = json.load(open(index_path))
latest = {}
for m in index["manifests"]:  # buildah leaves the manifest it replaced without a ref.name
    ref = m.get("annotations", {}).get("org.opencontainers.image.ref.name")
    if ref:
        latest[ref] = m
index["manifests"] = list(latest.values())
json.dump(index, open(index_path, "w"))
keep = set()
for m in index["manifests"]:
    keep.add(m["digest"])
    manifest = json.load(open(os.path.join(root, "blobs", *m["digest"].split(":"))))
    keep.add(manifest["config"]["digest"])
    keep.update(layer["digest"] for layer in manifest["layers"])
blobs = os.path.join(root, "blobs", "sha256")
for name in os.listdir(blobs):
    if f"sha256:{name}" not in keep:
        os.remove(os.path.join(blobs, name))
EOF
}

# build_all_images: the whole `make images`: base, pause, both images, export, digests, prune, and
# the hand-over to containerd when the real node runs.
build_all_images() {
  local start=$SECONDS tag
  if ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then
    apt_install buildah mmdebstrap
  fi
  mkdir -p "$IMAGE_DIR" "$LOG_DIR"
  bah rm --all >/dev/null 2>&1 || true # working containers (and their mounts) of a killed build
  rm -f "$IMAGE_DIR/keep.new"
  ensure_base_image
  ensure_pause_image
  build_image "$(operator_image)" Dockerfile
  build_image "$(trainer_image)" trainer_image/Dockerfile
  for tag in "$PAUSE_IMAGE" "$(operator_image)" "$(trainer_image)"; do
    export_image "$tag"
  done
  prune_images
  info "images built in $((SECONDS - start))s; digests in $IMAGE_DIR/digests:"
  awk '{ print "  " $1, $2 }' "$IMAGE_DIR/digests" >&2
  info "image cache in $IMAGE_DIR:"
  cache_sizes >&2
}
