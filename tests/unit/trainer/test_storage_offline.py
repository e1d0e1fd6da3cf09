"""The parts of object storage that need no server: URIs, local paths, hashes, error sentences.

Everything that talks to a store is tested against a real versitygw in
tests/integration/storage/; here only what is decided before a request is sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from kubetune_api import TrainerConfig
from kubetune_api.storage import split_s3
from kubetune_trainer.sources import localize
from kubetune_trainer.storage.client import explain, is_permanent
from kubetune_trainer.storage.transfer import build_manifest, tree_hash
from kubetune_trainer.train import output_of


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")


def test_split_s3_and_bad_uris() -> None:
    assert split_s3("s3://bucket/a/b.jsonl") == ("bucket", "a/b.jsonl")
    assert split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="not an s3://bucket/key URI"):
        split_s3("s3://B/x")


@pytest.mark.parametrize(
    ("err", "sentence", "permanent"),
    [
        (_client_error("InvalidAccessKeyId"), "refused the credentials (InvalidAccessKeyId); check", True),
        (_client_error("AccessDenied"), "access denied by http://s3.test:9000; check", True),
        (_client_error("NoSuchBucket"), "bucket 'bkt' does not exist at http://s3.test:9000", True),
        (_client_error("SlowDown"), "SlowDown from http://s3.test:9000", False),
        (NoCredentialsError(), "no credentials found; check AWS_ACCESS_KEY_ID", True),
    ],
)  # fmt: skip
def test_errors_become_one_sentence_naming_the_uri(
    err: Exception, sentence: str, permanent: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.test:9000")
    text = str(explain(err, "s3://bkt/data/train.jsonl"))
    assert text.startswith("s3://bkt/data/train.jsonl: ") and sentence in text and "\n" not in text
    assert is_permanent(err) is permanent


def test_endpoint_url_s3_wins_over_the_generic_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:2")
    assert "http://s3-only:2" in str(explain(_client_error("NoSuchBucket"), "s3://bkt/x"))


def test_the_content_hash_covers_names_sizes_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"one")
    (tmp_path / "MANIFEST.json").write_text("{}")  # bookkeeping: not content
    (tmp_path / ".s3-etags.json").write_text("{}")
    first = build_manifest(tmp_path)
    assert list(first["files"]) == ["a"] and first["bytes"] == 3
    assert first["sha256"] == tree_hash(first["files"])
    (tmp_path / "a").write_bytes(b"two")
    assert build_manifest(tmp_path)["sha256"] != first["sha256"]


def test_local_output_folder_for_each_kind_of_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_STORAGE_CACHE", "/cache")

    def cfg(output: dict) -> TrainerConfig:
        return TrainerConfig.model_validate(
            {"model": {"name": "m"}, "dataset": {"train": {"path": "t"}}, "output": output}
        )

    assert output_of(cfg({"path": "/out"})) == Path("/out")
    assert output_of(cfg({"uri": "file:///tmp/o"})) == Path("/tmp/o")
    assert output_of(cfg({"uri": "s3://bkt/runs/a"})) == Path("/cache/outputs/bkt/runs/a")
    assert output_of(cfg({"path": "/mnt/output", "uri": "s3://bkt/runs/a"})) == Path("/mnt/output")


def test_localize_leaves_local_sources_and_unwraps_a_file_model() -> None:
    cfg = TrainerConfig.model_validate(
        {
            "model": {"name": "tiny", "source": {"uri": "file:///models/tiny"}},
            "dataset": {"train": {"path": "/d/t.jsonl"}, "eval": {"uri": "file:///d/e.jsonl"}},
        }
    )
    local = localize(cfg)
    assert local.model.name == "/models/tiny" and local.model.source is None
    assert local.dataset.train == cfg.dataset.train and local.dataset.eval == cfg.dataset.eval
