"""The image cache of `make images` (hack/lib/images.sh): stale layers pruned, the size cap enforced.

Real buildah on a scratch image cache in a temporary folder (KUBETUNE_IMAGE_DIR), with
images.sh's own build_image and prune_images: a two-layer image from scratch is built, its big
layer changed and built again; the first build's big layer is then stale and must go while the
layer cache the latest build used stays; above KUBETUNE_IMAGE_CACHE_GB the build store is
dropped; a cache that stays above the cap (here: a base tarball) fails `make images` loudly.
Needs root and buildah (`make images` installs it); skipped without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TAG = "kubetune.local/cachetest:1"
HACK = Path(__file__).resolve().parents[2] / "hack"
MB = 1 << 20
# Two stages, as our Dockerfiles: a build stage's step images are no parents of the final image,
# so removing a superseded final image (buildah drops its untagged parents) leaves them behind.
CONTAINERFILE = "FROM scratch AS build\nCOPY big /big\nFROM scratch\nCOPY small /small\nCOPY --from=build /big /big\n"

DRIVER = r"""
set -euo pipefail
HACK_DIR=$1; shift
KUBETUNE_CACHE=$WORK
LOG_DIR=$WORK/logs
mkdir -p "$LOG_DIR"
info() { echo "cluster.sh: $*" >&2; }
die() { echo "cluster.sh: error: $*" >&2; exit 1; }
source "$HACK_DIR/lib/build.sh"
source "$HACK_DIR/lib/images.sh"
mkdir -p "$IMAGE_DIR"
"$@"
"""


class Cache:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.dir = work / "images"
        self.context = work / "context"
        self.context.mkdir(parents=True)
        (self.context / "Containerfile").write_text(CONTAINERFILE)
        (self.context / "small").write_text("small\n")

    def sh(self, *command: str, cap_gb: float = 1.0) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            WORK=str(self.work),
            KUBETUNE_IMAGE_DIR=str(self.dir),
            KUBETUNE_IMAGE_CACHE_GB=str(cap_gb),
        )
        return subprocess.run(
            ["bash", "-c", DRIVER, "driver", str(HACK), *command],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    def build(self, big_mb: int) -> subprocess.CompletedProcess[str]:
        """One `make images` round (build_all_images starts each with a fresh keep list)."""
        if big_mb:
            (self.context / "big").write_bytes(os.urandom(big_mb * MB))
        (self.dir / "keep.new").unlink(missing_ok=True)
        result = self.sh("build_image", TAG, "Containerfile", str(self.context))
        assert result.returncode == 0, result.stderr
        return result

    def image_ids(self) -> set[str]:
        result = self.sh(
            "bah", "images", "--all", "--noheading", "--no-trunc", "--format", "{{.ID}}"
        )
        assert result.returncode == 0, result.stderr
        return {line.removeprefix("sha256:") for line in result.stdout.split()}

    def storage_mb(self) -> float:
        out = subprocess.run(["du", "-sxk", str(self.dir)], capture_output=True, text=True)
        return int(out.stdout.split()[0]) / 1024


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    if os.geteuid() != 0 or not shutil.which("buildah"):
        pytest.skip("needs root and buildah (make images installs it)")
    return Cache(tmp_path)


def test_stale_layers_go_and_the_layer_cache_stays(cache: Cache) -> None:
    cache.build(big_mb=8)
    first = cache.image_ids()
    assert len(first) == 3, first  # build stage, `COPY small`, the tagged image
    prune = cache.sh("prune_images")
    assert prune.returncode == 0, prune.stderr
    assert cache.image_ids() == first, "a first build has nothing stale"
    cache.build(big_mb=8)  # new content in `big`: the old build stage's layer is now stale
    second = cache.image_ids()
    assert len(second - first) == 2 and len(second & first) == 2, (first, second)
    before = cache.storage_mb()
    prune = cache.sh("prune_images")
    assert prune.returncode == 0, prune.stderr
    assert "1 stale step images removed" in prune.stderr, prune.stderr
    left = cache.image_ids()
    assert len(left) == 3 and second - first <= left, (second, left)
    assert before - cache.storage_mb() >= 7, "the stale 8 MB layer is still on disk"
    # Nothing changed: the build is skipped on its inputs' hash, and prune keeps its steps.
    unchanged = cache.build(big_mb=0)
    assert "inputs unchanged since its build, kept" in unchanged.stderr, unchanged.stderr
    assert cache.sh("prune_images").returncode == 0
    assert cache.image_ids() == left
    # What stayed is the layer cache: a forced rebuild takes every step from it.
    (cache.dir / "inputs" / "cachetest").unlink()
    cache.build(big_mb=0)
    log = (cache.work / "logs" / "build-cachetest.log").read_text()
    assert log.count("Using cache") == 3, log
    assert cache.image_ids() == left


def test_above_the_cap_the_build_store_goes_and_a_cache_still_above_fails(cache: Cache) -> None:
    cache.build(big_mb=8)
    assert cache.storage_mb() > 8
    prune = cache.sh("prune_images", cap_gb=6 / 1024)  # 6 MB
    assert prune.returncode == 0, prune.stderr
    assert "dropping the build store" in prune.stderr
    assert cache.image_ids() == set()
    assert cache.storage_mb() < 6
    base = cache.dir / "base"
    base.mkdir()
    (base / "python-3.11-slim-bookworm.tar").write_bytes(os.urandom(8 * MB))
    prune = cache.sh("prune_images", cap_gb=6 / 1024)
    assert prune.returncode != 0
    assert "still above KUBETUNE_IMAGE_CACHE_GB" in prune.stderr
    assert "base" in prune.stderr and "total" in prune.stderr, prune.stderr
