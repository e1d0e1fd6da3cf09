"""A trainer's output at an `s3://` URI: the local output folder, mirrored up in the background.

The trainer keeps writing its local output folder as before (an emptyDir in a pod); this class
keeps `spec.output.uri` in step with it:

- `restore` (before the run claims its folder): downloads `run.json` and the newest *complete*
  checkpoint of the run at the URI (one whose `MANIFEST.json` exists), so the identity rules
  and the resume of a fresh pod work exactly as on a volume. Incomplete ones (a pod killed
  mid-upload) are ignored.
- `checkpoint(path)`: queues a (hard-linked copy of the) checkpoint; a background thread uploads it (manifest last) and
  then deletes the URI's complete checkpoints beyond the newest `keep`. Training never waits
  for an upload.
- Every upload retries with exponential backoff (`KUBETUNE_UPLOAD_ATTEMPTS`, default 5, from
  `KUBETUNE_UPLOAD_BACKOFF` seconds, default 1); wrong credentials or a missing bucket are not
  retried. The first failure that outlives its retries is raised by the next `check()` (every
  checkpoint) or by `finish`, so the attempt fails with the reason instead of succeeding.
- `finish` waits for the queue, uploads the adapter (manifest last) and `summary.json`, and
  returns where the adapter is, its size and its content hash.

Called by `kubetune_trainer.train` on the main process only.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubetune_trainer.storage.client import StorageError, explain, is_permanent
from kubetune_trainer.storage.transfer import (
    MANIFEST,
    delete_tree,
    download,
    get_json,
    join,
    list_folders,
    read_manifest,
    upload_file,
    upload_tree,
)

T = TypeVar("T")
CHECKPOINTS = "checkpoints"
RUN_FILE = "run.json"
SUMMARY = "summary.json"
ADAPTER = "adapter"
PREFIX = "step-"
UPLOADS = ".uploads"  # hard-linked copies of the checkpoints waiting for upload


def with_retries(what: str, fn: Callable[[], T]) -> T:
    """fn(), retried with exponential backoff; a StorageError saying `what` failed in the end."""
    attempts = max(1, int(os.environ.get("KUBETUNE_UPLOAD_ATTEMPTS", "5")))
    delay = float(os.environ.get("KUBETUNE_UPLOAD_BACKOFF", "1"))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except StorageError as err:
            cause = err.__cause__ or err
            if attempt == attempts or is_permanent(cause):
                tries = f"after {attempt} attempt{'s' if attempt > 1 else ''}"
                raise StorageError(f"{what} failed {tries}: {err}") from err
            _log({"event": "upload_retry", "what": what, "attempt": attempt, "error": str(err)})
            time.sleep(min(delay * 2 ** (attempt - 1), 30.0))
    raise AssertionError("unreachable")


def _log(event: dict[str, Any]) -> None:
    print(json.dumps(event, ensure_ascii=False), file=sys.stderr, flush=True)


class OutputMirror:
    """Keeps `uri` in step with the local output folder `local` (see the module docstring)."""

    def __init__(self, local: Path, uri: str, keep: int = 2) -> None:
        self.local, self.uri, self.keep = local, uri.rstrip("/"), keep
        self.jobs: queue.Queue[Path | None] = queue.Queue()
        self.error: StorageError | None = None
        self.uploaded: list[str] = []  # checkpoint names uploaded by this process, oldest first
        self.thread = threading.Thread(target=self._work, name="kubetune-upload", daemon=True)
        self.thread.start()

    # -- before the run ------------------------------------------------------------------
    def complete_checkpoints(self) -> list[str]:
        """Checkpoint names at the URI whose manifest exists, oldest first."""
        names = [n for n in list_folders(join(self.uri, CHECKPOINTS)) if n.startswith(PREFIX)]
        return [n for n in names if read_manifest(join(self.uri, CHECKPOINTS, n)) is not None]

    def restore(self) -> Path | None:
        """Download run.json and the newest complete checkpoint (if the local folder lacks it)."""
        if not (self.local / RUN_FILE).exists():
            record = get_json(join(self.uri, RUN_FILE))  # None: a new run (a missing bucket raises)
            if record is None:
                return None
            self.local.mkdir(parents=True, exist_ok=True)
            (self.local / RUN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        complete = self.complete_checkpoints()
        if not complete:
            return None
        newest = complete[-1]
        target = self.local / CHECKPOINTS / newest
        if not target.exists():
            tmp = self.local / CHECKPOINTS / f".tmp-{newest}"
            shutil.rmtree(tmp, ignore_errors=True)
            download(join(self.uri, CHECKPOINTS, newest) + "/", tmp)
            (tmp / MANIFEST).unlink(missing_ok=True)
            (tmp / ".s3-etags.json").unlink(missing_ok=True)
            tmp.rename(target)
        _log({"event": "checkpoint_restored", "uri": join(self.uri, CHECKPOINTS, newest)})
        self.uploaded = complete
        return target

    def put_run_file(self) -> None:
        """Upload run.json (the run's identity) now: a later pod must find it."""
        path = self.local / RUN_FILE
        with_retries(f"upload of {RUN_FILE}", lambda: upload_file(path, join(self.uri, RUN_FILE)))

    # -- during the run ------------------------------------------------------------------
    def checkpoint(self, path: Path) -> None:
        """Queue a written checkpoint for upload; raise an earlier upload's failure.

        The upload reads a hard-linked copy (`<output>/.uploads/<name>`: no bytes copied), so
        the loop may prune its local checkpoints while an older one still uploads."""
        self.check()
        staged = self.local / UPLOADS / path.name
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(path, staged, copy_function=os.link)
        self.jobs.put(staged)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        while (path := self.jobs.get()) is not None:
            try:
                if self.error is None:
                    self._upload_checkpoint(path)
            except StorageError as err:
                self.error = err
            except Exception as err:  # an unexpected botocore error: fail the run, with it
                self.error = explain(err, self.uri)
            finally:
                self.jobs.task_done()
        self.jobs.task_done()

    def _upload_checkpoint(self, path: Path) -> None:
        remote = join(self.uri, CHECKPOINTS, path.name)
        _log({"event": "checkpoint_uploading", "checkpoint": path.name, "uri": remote})
        started = time.perf_counter()
        manifest = with_retries(
            f"upload of checkpoint {path.name}", lambda: upload_tree(path, remote)
        )
        _log(
            {
                "event": "checkpoint_uploaded",
                "uri": remote,
                "bytes": manifest["bytes"],
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        self.uploaded = [n for n in self.uploaded if n != path.name] + [path.name]
        for old in self.uploaded[: -self.keep] if self.keep > 0 else []:
            with_retries(
                f"deletion of old checkpoint {old}",
                lambda o=old: delete_tree(  # type: ignore[misc]
                    join(self.uri, CHECKPOINTS, o)
                ),
            )
        self.uploaded = self.uploaded[-self.keep :] if self.keep > 0 else self.uploaded
        shutil.rmtree(path, ignore_errors=True)

    def drain(self) -> None:
        """Wait until every queued checkpoint is uploaded (or has failed)."""
        self.jobs.join()

    # -- at the end ----------------------------------------------------------------------
    def finish(self, adapter_dir: Path) -> dict[str, Any]:
        """Wait for the checkpoints, upload the adapter and summary.json; the adapter's facts."""
        self.drain()
        self.check()
        remote = join(self.uri, ADAPTER)
        manifest = with_retries("upload of the adapter", lambda: upload_tree(adapter_dir, remote))
        summary = self.local / SUMMARY
        if summary.exists():
            with_retries(
                f"upload of {SUMMARY}", lambda: upload_file(summary, join(self.uri, SUMMARY))
            )
        return {"uri": remote, "bytes": manifest["bytes"], "sha256": manifest["sha256"]}

    def close(self) -> None:
        """Upload what is queued (a failed or preempted run keeps its last checkpoint), stop."""
        self.jobs.put(None)
        self.thread.join()
