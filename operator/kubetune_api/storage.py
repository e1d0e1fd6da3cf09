"""Object storage in the schema: which URI schemes the runtime reads and writes, and `storage`.

`s3://bucket/key` is the one object-store scheme the trainer and server open (any S3-compatible
store: AWS S3, MinIO, Ceph, R2, versitygw, GCS's XML API); `file://` is a local path. A
FineTuneJob's or ModelDeployment's `spec.storage` says how to reach the store: an endpoint
override (path-style addressing), a region, and the Secret holding `AWS_ACCESS_KEY_ID` and
`AWS_SECRET_ACCESS_KEY` (by reference; without one the pod's own identity is used), plus the
size of the download cache the pre-flight checks the base model against. The operator turns it
into the standard `AWS_*` environment variables of the pod; the runtime never reads this class.
Pure and torch-free: the schema, the CRD generator and the operator's validation use it.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

import kubetune_api.formats as formats
from kubetune_api.base import ApiModel

S3 = "s3://"
FILE = "file://"
READABLE = (FILE, S3)  # what a source URI may start with
WRITABLE = (FILE, S3)  # what spec.output.uri may start with
# RE2 (CRD pattern and CEL) and Python alike: a bucket name (3-63 chars) and an optional key.
S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
URI_RULE = "self.startsWith('file://') || self.matches('" + S3_URI + "')"
URI_MESSAGE = "only file:// (a local path) and s3://bucket/key (object storage) are supported"
DEFAULT_CACHE_SIZE = "50Gi"


def check_uri(uri: str | None) -> str | None:
    """The uri unchanged, or ValueError when the runtime cannot open it (a pydantic validator:
    `ConfigError` appends the value)."""
    if uri is None or uri.startswith(FILE) or re.fullmatch(S3_URI, uri):
        return uri
    raise ValueError(URI_MESSAGE)


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key"); ValueError for anything else."""
    if not re.fullmatch(S3_URI, uri):
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    bucket, _, key = uri.removeprefix(S3).partition("/")
    return bucket, key


def is_s3(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith(S3)


Uri = Annotated[str, Field(max_length=formats.PATH_MAX)]


class SecretRef(ApiModel):
    """A Secret in the same namespace, read by reference (its values never enter a spec)."""

    name: str = Field(
        min_length=1,
        max_length=formats.NAME_MAX,
        pattern=formats.DNS_SUBDOMAIN,
        description="Name of the Secret (keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).",
    )


class StorageSpec(ApiModel):
    """How the pods reach the object store of every s3:// URI in this spec."""

    endpoint: str | None = Field(
        default=None,
        max_length=formats.PATH_MAX,
        pattern=r"^https?://[^\s/]+(/.*)?$",
        description="S3-compatible endpoint (http://minio.storage:9000); path-style addressing. "
        "Unset: AWS S3 (or the AWS_ENDPOINT_URL the image sets).",
    )
    region: str | None = Field(
        default=None, max_length=64, description="Region (AWS_REGION); unset: us-east-1."
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; unset: the pod's "
        "own identity (IRSA, instance profile, workload identity).",
    )
    cache_size: str = Field(
        default=DEFAULT_CACHE_SIZE,
        max_length=64,
        pattern=formats.QUANTITY,
        description="Size of the download cache (base model, data, adapters): the pod's cache "
        "volume limit, which the pre-flight checks the base model's weights against.",
    )
    cache_claim_name: str | None = Field(
        default=None,
        max_length=formats.NAME_MAX,
        pattern=formats.DNS_SUBDOMAIN,
        description="PersistentVolumeClaim for the download cache, so a restarted pod does not "
        "download again; unset: an emptyDir of cacheSize.",
    )

    @field_validator("endpoint")
    @classmethod
    def _no_trailing_space(cls, endpoint: str | None) -> str | None:
        return endpoint.rstrip("/") if endpoint else endpoint
