"""The boto3 S3 client, configured from the standard environment, and its errors in one sentence.

boto3 reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
`AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_S3` itself (and the pod's own identity when no keys are
set); this module adds what it does not: path-style addressing whenever an endpoint override is
set (MinIO, Ceph, versitygw and most S3-compatible stores need it), bounded timeouts, and
botocore's standard retry mode. `explain` turns a botocore error into a `StorageError` whose
message names the URI, what went wrong and what to check. Called by `transfer` and `mirror`.
"""

from __future__ import annotations

import os
import threading
from typing import Any

ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
CREDENTIALS_HINT = (
    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on a cluster: the Secret named by "
    "spec.storage.credentialsSecretRef)"
)
_lock = threading.Lock()
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_clients: dict[tuple[str | None, ...], Any] = {}


class StorageError(RuntimeError):
    """An object-storage operation failed; the message is one sentence naming the URI."""


def endpoint() -> str | None:
    """The endpoint override from the environment, if any (AWS_ENDPOINT_URL_S3 wins)."""
    return next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)


def s3_client() -> Any:
    """One shared client per endpoint and region (boto3 clients are thread-safe)."""
    url = endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    # Keyed by the credentials too, so a process whose environment changed gets a new client.
    key = (url, region, *(os.environ.get(v) for v in CREDENTIAL_VARS))
    with _lock:
        if key not in _clients:
            _clients[key] = _make(url, region)
        return _clients[key]


def _make(url: str | None, region: str | None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path" if url else "auto"},
        retries={"mode": "standard", "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "5"))},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=32,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=url, region_name=region or "us-east-1", config=config
    )


PERMANENT = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AccessDenied",
    "NoSuchBucket",
    "NoSuchKey",
    "InvalidBucketName",
}


def is_permanent(err: BaseException) -> bool:
    """Whether retrying cannot help (wrong credentials, no such bucket or key)."""
    return _code(err) in PERMANENT or type(err).__name__ in ("NoCredentialsError",)


def _code(err: BaseException) -> str:
    response = getattr(err, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or "")


def explain(err: BaseException, uri: str) -> StorageError:
    """The error as one sentence: '<uri>: <what happened>; <what to check>'."""
    code = _code(err)
    where = endpoint() or "AWS S3"
    bucket = uri.removeprefix("s3://").split("/", 1)[0]
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        why = f"{where} refused the credentials ({code}); {CREDENTIALS_HINT}"
    elif code == "AccessDenied" or code == "403":
        why = f"access denied by {where}; {CREDENTIALS_HINT} and the bucket policy"
    elif code == "NoSuchBucket":
        why = f"bucket {bucket!r} does not exist at {where}"
    elif code in ("NoSuchKey", "404"):
        why = f"no such object at {where}"
    elif type(err).__name__ == "NoCredentialsError":
        why = f"no credentials found; {CREDENTIALS_HINT}"
    elif type(err).__name__ in ("EndpointConnectionError", "ConnectTimeoutError"):
        why = f"cannot reach {where} ({err})"
    else:
        why = f"{code or type(err).__name__} from {where}: {err}"
    return StorageError(f"{uri}: {why}")
