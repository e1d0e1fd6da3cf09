"""Object storage (`s3://`) for the runtime image: downloads into a cache, uploads with manifests.

`client` makes the boto3 client from the standard `AWS_*` variables and turns its errors into
one sentence (`StorageError`); `transfer` downloads a file or a folder into the cache and
uploads a folder whose `MANIFEST.json` is written last; `mirror` keeps a trainer's local output
folder and its `s3://` output in step (resume from the newest complete checkpoint, uploads in a
background thread). Called by the trainer (`sources`, `train`) and the server (`loading`).
"""

from kubetune_trainer.storage.client import StorageError

__all__ = ["StorageError"]
