"""S3 upload / download against a real S3 API server on localhost (moto's server mode)."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from musicrec.errors import StorageError, UploadInProgressError
from musicrec.s3 import (
    UPLOAD_MANIFEST,
    artifact_files,
    download_artifacts,
    fetched_copy_is_complete,
    s3_client,
    upload_artifacts,
)
from musicrec.settings import Settings

pytest.importorskip("moto.server")

SECRET = "s3cr3t-Do-Not-Leak-0123456789"
ARTIFACTS = {
    "data/items.parquet": b"PAR1 items",
    "data/events.parquet": b"PAR1 events" * 1000,
    "recommendations/top_popular.parquet": b"PAR1 top",
    "recommendations/similar.parquet": b"PAR1 similar",
    "recommendations/heard/tracks.npy": b"\x93NUMPY fake",
    "model/als.npz": bytes(range(256)) * 50,
    "model/ranker/catboost.cbm": b"model bytes",
    "pictures/long_tail.png": b"\x89PNG fake",
    "metrics.json": b'{"precision@5": {"mean": 0.01}}',
}
NOT_UPLOADED = {
    "cache/als_factors.npy": b"cache",  # not an artifact folder
    "notes.txt": b"stray top-level file",
    "data/.items.parquet.abc123.tmp": b"half-written by atomic_path",
}


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "S3_BUCKET_NAME",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "S3_ENDPOINT_URL",
    ):
        monkeypatch.delenv(var, raising=False)


def make_settings(url: str | None, bucket: str | None, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "S3_BUCKET_NAME": bucket,
        "AWS_ACCESS_KEY_ID": "AKIATESTTESTTEST0000",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "S3_ENDPOINT_URL": url,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    values.update(kw)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def admin(url: str, service: str = "s3") -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def new_bucket(url: str) -> str:
    name = f"musicrec-{uuid.uuid4().hex[:12]}"
    admin(url).create_bucket(Bucket=name)
    return name


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def bucket_objects(url: str, bucket: str) -> dict[str, bytes]:
    s3 = admin(url)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = tmp_path / "recsys"
    write_tree(root, {**ARTIFACTS, **NOT_UPLOADED})
    return root


def test_artifact_files_layout(artifacts: Path) -> None:
    keys = [key for _, key in artifact_files(artifacts)]
    assert sorted(keys) == sorted(f"recsys/{rel}" for rel in ARTIFACTS)


def test_artifact_files_follow_linked_folders_once(
    artifacts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder under an artifact folder that is a symbolic link is uploaded as a folder
    (Path.rglob skipped it silently); a link back to a folder above is not walked twice."""
    elsewhere = tmp_path / "elsewhere"
    write_tree(elsewhere, {"extra/notes.json": b"{}", "top.txt": b"x"})
    (artifacts / "model" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (artifacts / "model" / "loop").symlink_to(artifacts / "model", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="musicrec.s3"):
        keys = [key for _, key in artifact_files(artifacts)]
    assert sorted(keys) == sorted(
        [f"recsys/{rel}" for rel in ARTIFACTS]
        + ["recsys/model/linked/extra/notes.json", "recsys/model/linked/top.txt"]
    )
    assert "model/loop is the folder" in caplog.text


@pytest.mark.parametrize("prefix", ["", "runs/42", "/runs/43/"])
def test_upload_then_download_round_trip(
    s3_url: str, artifacts: Path, tmp_path: Path, prefix: str
) -> None:
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket, s3_prefix=prefix)
    before = snapshot(artifacts)

    keys = upload_artifacts(settings, artifacts)

    folder = prefix.strip("/") + "/" if prefix.strip("/") else ""
    expected = {f"{folder}recsys/{rel}": data for rel, data in ARTIFACTS.items()}
    assert sorted(keys) == sorted(expected)
    objects = bucket_objects(s3_url, bucket)
    # and, written last, the manifest of this upload: every file with its size and ETag
    listed = json.loads(objects.pop(f"{folder}recsys/{UPLOAD_MANIFEST}"))["files"]
    assert objects == expected
    assert {rel: e["size"] for rel, e in listed.items()} == {
        rel: len(data) for rel, data in ARTIFACTS.items()
    }
    assert all(e["etag"] for e in listed.values())
    assert snapshot(artifacts) == before  # local artifacts untouched

    # a stray object in the bucket that is not an artifact is not downloaded
    admin(s3_url).put_object(Bucket=bucket, Key=f"{folder}recsys/cache/junk", Body=b"x")
    target = tmp_path / "fetched"
    paths = download_artifacts(settings, target)
    assert sorted(p.relative_to(target).as_posix() for p in paths) == sorted(ARTIFACTS)
    assert snapshot(target) == {
        rel: hashlib.sha256(data).hexdigest() for rel, data in ARTIFACTS.items()
    }


def test_download_overwrites_existing_files(s3_url: str, artifacts: Path, tmp_path: Path) -> None:
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    target = tmp_path / "service"
    write_tree(target, {"data/items.parquet": b"stale"})
    download_artifacts(settings, target)
    assert (target / "data/items.parquet").read_bytes() == ARTIFACTS["data/items.parquet"]
    assert not [p for p in target.rglob("*") if p.name.endswith(".tmp")]


def test_download_only_the_named_files(s3_url: str, artifacts: Path, tmp_path: Path) -> None:
    """A service fetches what it reads, not the whole tree; a named file the bucket lacks
    is a StorageError naming it, an optional one is fetched only if the bucket has it."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    target = tmp_path / "similar-service"
    wanted = ["recommendations/similar.parquet", "recommendations/top_popular.parquet"]
    paths = download_artifacts(settings, target, only=wanted)
    assert sorted(p.relative_to(target).as_posix() for p in paths) == sorted(wanted)
    assert snapshot(target) == {rel: hashlib.sha256(ARTIFACTS[rel]).hexdigest() for rel in wanted}
    with pytest.raises(StorageError, match="recommendations/nope.parquet not in the bucket"):
        download_artifacts(settings, tmp_path / "x", only=[*wanted, "recommendations/nope.parquet"])
    # `optional` files come when the bucket has them, and their absence is no error
    target = tmp_path / "recommendation-service"
    extra = ["recommendations/heard/tracks.npy", "recommendations/heard/users.npy"]
    paths = download_artifacts(settings, target, only=wanted, optional=extra)
    got = sorted(p.relative_to(target).as_posix() for p in paths)
    assert got == sorted([*wanted, "recommendations/heard/tracks.npy"])
    assert snapshot(target) == {rel: hashlib.sha256(ARTIFACTS[rel]).hexdigest() for rel in got}


def test_skipped_when_bucket_not_set(
    artifacts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings("http://127.0.0.1:9", None)
    with caplog.at_level(logging.INFO, logger="musicrec.s3"):
        assert upload_artifacts(settings, artifacts) == []
    records = [r for r in caplog.records if r.name == "musicrec.s3"]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("INFO", "S3 upload skipped: S3_BUCKET_NAME is not set")
    ]
    assert download_artifacts(settings, tmp_path / "x") == []


def test_missing_bucket(s3_url: str, artifacts: Path) -> None:
    before = snapshot(artifacts)
    settings = make_settings(s3_url, "no-such-bucket-here")
    with pytest.raises(StorageError) as err:
        upload_artifacts(settings, artifacts)
    msg = str(err.value)
    assert "no-such-bucket-here" in msg and "does not exist" in msg and s3_url in msg
    assert SECRET not in msg
    assert snapshot(artifacts) == before
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        download_artifacts(settings, artifacts)
    assert snapshot(artifacts) == before


@pytest.fixture
def auth_enforced(s3_url: str) -> Iterator[tuple[str, str]]:
    """An IAM user allowed s3:*, then moto told to check every request's signature."""
    iam = admin(s3_url, "iam")
    user = f"ci-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    allow_s3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    policy = {"Version": "2012-10-17", "Statement": [allow_s3]}
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]

    def reset_auth(count: str) -> None:
        req = urllib.request.Request(
            f"{s3_url}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200

    reset_auth("0")
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        reset_auth("inf")


def test_credentials_are_checked(
    s3_url: str, artifacts: Path, auth_enforced: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    key_id, secret = auth_enforced
    bucket = f"musicrec-auth-{uuid.uuid4().hex[:8]}"
    good = make_settings(s3_url, bucket, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
    s3_client(good).create_bucket(Bucket=bucket)
    # the right key pair works while moto enforces authentication ...
    assert len(upload_artifacts(good, artifacts)) == len(ARTIFACTS)
    before = snapshot(artifacts)
    # ... a wrong secret or an unknown key id is refused, without leaking the secret
    for bad in (
        make_settings(s3_url, bucket, AWS_ACCESS_KEY_ID=key_id),  # wrong secret
        make_settings(s3_url, bucket),  # unknown key id
    ):
        with caplog.at_level(logging.DEBUG, logger="musicrec"), pytest.raises(StorageError) as err:
            upload_artifacts(bad, artifacts)
        msg = str(err.value)
        assert bucket in msg and "access denied" in msg and s3_url in msg
        assert SECRET not in msg and SECRET not in caplog.text
        assert err.value.__cause__ is None and err.value.__suppress_context__
    assert snapshot(artifacts) == before


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoint(artifacts: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    settings = make_settings(url, "some-bucket")
    client = s3_client(settings, connect_timeout=1, read_timeout=1, max_attempts=1)
    before = snapshot(artifacts)
    with pytest.raises(StorageError) as err:
        upload_artifacts(settings, artifacts, client=client)
    msg = str(err.value)
    assert "cannot reach" in msg and url in msg and "some-bucket" in msg
    assert SECRET not in msg
    assert snapshot(artifacts) == before


def test_client_settings(s3_url: str) -> None:
    client = s3_client(make_settings(s3_url, "b"))
    assert client.meta.endpoint_url == s3_url
    assert client.meta.region_name == "us-east-1"
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY is not set") as err:
        s3_client(make_settings(s3_url, "b", AWS_SECRET_ACCESS_KEY=None))
    assert "AKIA" not in str(err.value)


def test_malformed_endpoint_is_a_storage_error(artifacts: Path) -> None:
    """An S3_ENDPOINT_URL without a scheme is a clear `StorageError` naming it, for the
    client alone and for the upload and download that build one (botocore's ValueError
    escaped before, as a traceback after the whole pipeline had run)."""
    settings = make_settings("127.0.0.1:5077", "some-bucket")
    for call in (
        lambda: s3_client(settings),
        lambda: upload_artifacts(settings, artifacts),
        lambda: download_artifacts(settings, artifacts),
    ):
        with pytest.raises(StorageError, match="S3_ENDPOINT_URL '127.0.0.1:5077'") as err:
            call()
        assert SECRET not in str(err.value)


def test_a_download_that_fails_on_every_attempt_is_a_storage_error(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """boto3's own errors (here RetriesExceededError: the body was cut off on every try)
    become a `StorageError` too, and no partial file is left behind."""
    from boto3.exceptions import RetriesExceededError

    settings = make_settings(s3_url, new_bucket(s3_url))
    upload_artifacts(settings, artifacts)

    class CutOff(CountingClient):
        def download_file(self, bucket: str, key: str, filename: str) -> None:
            Path(filename).write_bytes(b"half a file")
            raise RetriesExceededError(ConnectionError("connection closed mid-body"))

    client = CutOff(s3_client(settings))
    with pytest.raises(StorageError, match="S3 download failed") as err:
        download_artifacts(settings, tmp_path / "out", client=client)
    assert SECRET not in str(err.value)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_empty_artifacts_dir_uploads_nothing(s3_url: str, tmp_path: Path) -> None:
    bucket = new_bucket(s3_url)
    assert upload_artifacts(make_settings(s3_url, bucket), tmp_path / "missing") == []
    assert bucket_objects(s3_url, bucket) == {}


class CountingClient:
    """A real S3 client whose downloads are counted (by key)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.downloads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        self.downloads.append(key)
        self.client.download_file(bucket, key, filename)


def test_reuse_downloads_only_what_changed(s3_url: str, artifacts: Path, tmp_path: Path) -> None:
    """`reuse=True` (the services' fetch) keeps a file an earlier fetch wrote from the same
    object, and downloads it again when the object or the local file changed or is gone."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    target = tmp_path / "service"
    wanted = ["recommendations/similar.parquet", "recommendations/top_popular.parquet"]

    def fetch() -> tuple[list[str], list[str]]:
        client = CountingClient(s3_client(settings))
        paths = download_artifacts(settings, target, client=client, only=wanted, reuse=True)
        assert sorted(p.relative_to(target).as_posix() for p in paths) == sorted(wanted)
        return sorted(k.removeprefix("recsys/") for k in client.downloads), paths_text()

    def paths_text() -> list[str]:
        return [(target / rel).read_text() for rel in wanted]

    assert fetch() == (sorted(wanted), ["PAR1 similar", "PAR1 top"])
    assert fetch() == ([], ["PAR1 similar", "PAR1 top"])  # nothing changed: nothing fetched
    # a new object in the bucket (a new upload)
    (artifacts / "recommendations/similar.parquet").write_text("PAR1 similar v2")
    upload_artifacts(settings, artifacts)
    assert fetch() == (["recommendations/similar.parquet"], ["PAR1 similar v2", "PAR1 top"])
    # a local file edited or deleted since the fetch
    (target / "recommendations/top_popular.parquet").write_text("edited by hand")
    assert fetch() == (["recommendations/top_popular.parquet"], ["PAR1 similar v2", "PAR1 top"])
    (target / "recommendations/similar.parquet").unlink()
    assert fetch() == (["recommendations/similar.parquet"], ["PAR1 similar v2", "PAR1 top"])
    # an unreadable record of the fetches: everything again, no error
    (target / ".s3-fetched.json").write_text("{not json")
    assert fetch() == (sorted(wanted), ["PAR1 similar v2", "PAR1 top"])
    # the record and the lock stay out of the uploads
    assert not {key for _, key in artifact_files(target)} & {
        "recsys/.s3-fetched.json",
        "recsys/.s3-fetch.lock",
    }
    # without reuse every call downloads (the CLI's plain download)
    client = CountingClient(s3_client(settings))
    download_artifacts(settings, target, client=client, only=wanted)
    assert len(client.downloads) == 2


def test_a_bucket_in_the_middle_of_an_upload_is_not_fetched(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """An object that differs from the upload manifest (a new upload has replaced it but
    not yet the manifest, or stopped half-way) stops the download before anything is
    written, naming the file; once the upload finishes, the fetch goes through."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    admin(s3_url).put_object(
        Bucket=bucket, Key="recsys/recommendations/similar.parquet", Body=b"PAR1 similar v2"
    )
    target = tmp_path / "service"
    wanted = ["recommendations/similar.parquet", "recommendations/top_popular.parquet"]
    for reuse in (False, True):
        with pytest.raises(StorageError, match="recommendations/similar.parquet differ") as err:
            download_artifacts(settings, target, only=wanted, reuse=reuse)
        assert "upload under way" in str(err.value) and SECRET not in str(err.value)
        assert not target.exists() or not [p for p in target.rglob("*.parquet")]
    # a file the manifest lists, deleted from the bucket: no upload brings it back, so not
    # "an upload under way" (a service waited `fetch_wait_s` for it)
    (artifacts / "recommendations/similar.parquet").write_text("PAR1 similar v2")
    upload_artifacts(settings, artifacts)
    admin(s3_url).delete_object(Bucket=bucket, Key="recsys/recommendations/top_popular.parquet")
    with pytest.raises(
        StorageError,
        match="top_popular.parquet listed in upload-manifest.json but not in the bucket",
    ) as gone:
        download_artifacts(settings, target, only=wanted, reuse=True)
    assert not isinstance(gone.value, UploadInProgressError)
    upload_artifacts(settings, artifacts)  # the upload completes
    paths = download_artifacts(settings, target, only=wanted, reuse=True)
    assert [(target / rel).read_text() for rel in wanted] == ["PAR1 similar v2", "PAR1 top"]
    assert len(paths) == 2


def test_objects_of_earlier_uploads_are_ignored_and_stale_local_copies_removed(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """A file the latest upload did not write (an optional heard index left from an
    earlier run) is not fetched, and a copy fetched from it before is removed; a bucket
    without a manifest (uploaded before manifests existed) is fetched as it is."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    target = tmp_path / "service"
    only = ["recommendations/similar.parquet"]
    heard = "recommendations/heard/tracks.npy"
    fetched = download_artifacts(settings, target, only=only, optional=[heard], reuse=True)
    assert (target / heard).is_file() and len(fetched) == 2
    # the next run writes no heard index; its old object stays in the bucket
    (artifacts / heard).unlink()
    upload_artifacts(settings, artifacts)
    assert f"recsys/{heard}" in bucket_objects(s3_url, bucket)
    fetched = download_artifacts(settings, target, only=only, optional=[heard], reuse=True)
    assert [p.relative_to(target).as_posix() for p in fetched] == only
    assert not (target / heard).exists()
    assert heard not in json.loads((target / ".s3-fetched.json").read_text())
    # no manifest at all: every artifact object counts, as before
    admin(s3_url).delete_object(Bucket=bucket, Key=f"recsys/{UPLOAD_MANIFEST}")
    fetched = download_artifacts(settings, target, only=only, optional=[heard], reuse=True)
    assert (target / heard).is_file() and len(fetched) == 2


def test_a_fetch_record_naming_files_outside_the_folder_removes_nothing_there(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """The fetch removes recorded files the bucket's upload no longer lists: a record
    edited to name `../victim` or an absolute path made it delete those (found by a
    security review). Names no fetch could have written are ignored."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    target = tmp_path / "service"
    only = ["recommendations/similar.parquet"]
    download_artifacts(settings, target, only=only, reuse=True)
    outside, absolute = tmp_path / "victim.db", tmp_path / "elsewhere" / "victim2"
    absolute.parent.mkdir()
    for victim in (outside, absolute):
        victim.write_text("keep me")
    record_path = target / ".s3-fetched.json"
    record = json.loads(record_path.read_text())
    record.update({"../victim.db": {}, str(absolute): {}, "data//x": {}})
    record_path.write_text(json.dumps(record))
    fetched = download_artifacts(settings, target, only=only, reuse=True)
    assert [p.relative_to(target).as_posix() for p in fetched] == only
    assert outside.read_text() == "keep me" and absolute.read_text() == "keep me"


def test_workers_fetching_at_once_download_each_file_once(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """The workers of one service start together: the lock makes one download and the
    others keep its files."""
    from concurrent.futures import ThreadPoolExecutor

    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    target = tmp_path / "service"
    clients = [CountingClient(s3_client(settings)) for _ in range(4)]

    def fetch(client: CountingClient) -> list[Path]:
        return download_artifacts(settings, target, client=client, reuse=True)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(fetch, clients))
    downloads = [k for c in clients for k in c.downloads]
    assert sorted(downloads) == sorted(f"recsys/{rel}" for rel in ARTIFACTS)
    assert all(len(r) == len(ARTIFACTS) for r in results)
    files = snapshot(target)
    assert files.pop(".s3-fetched.json") and files.pop(".s3-fetch.lock")
    assert files == {rel: hashlib.sha256(data).hexdigest() for rel, data in ARTIFACTS.items()}


def test_a_complete_earlier_fetch_is_told_from_a_mix(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """`fetched_copy_is_complete`: every wanted file fetched from one upload and untouched
    since; not a copy edited locally, nor one whose files came from two uploads (a fetch
    that stopped half-way), nor a record written before uploads were recorded."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    target = tmp_path / "service"
    wanted = ["recommendations/similar.parquet", "recommendations/top_popular.parquet"]
    heard = ["recommendations/heard/tracks.npy", "recommendations/heard/users.npy"]
    assert not fetched_copy_is_complete(target, wanted)  # nothing fetched yet
    download_artifacts(settings, target, only=wanted, optional=heard, reuse=True)
    assert fetched_copy_is_complete(target, wanted, heard)  # users.npy: not in the bucket
    assert not fetched_copy_is_complete(target, [*wanted, "model/als.npz"])  # never fetched
    # a new upload changes one file; the fetch of it "fails" before the second file:
    # simulated by fetching only the changed one
    (artifacts / "recommendations/similar.parquet").write_text("PAR1 similar v2")
    upload_artifacts(settings, artifacts)
    download_artifacts(settings, target, only=wanted[:1], reuse=True)
    assert fetched_copy_is_complete(target, wanted[:1])
    assert not fetched_copy_is_complete(target, wanted)  # two uploads' files
    download_artifacts(settings, target, only=wanted, optional=heard, reuse=True)
    assert fetched_copy_is_complete(target, wanted, heard)  # kept files re-recorded
    (target / wanted[1]).write_text("edited by hand")
    assert not fetched_copy_is_complete(target, wanted)
    download_artifacts(settings, target, only=wanted, reuse=True)
    record = json.loads((target / ".s3-fetched.json").read_text())
    for entry in record.values():
        del entry["upload"]  # as written before this was recorded
    (target / ".s3-fetched.json").write_text(json.dumps(record))
    assert not fetched_copy_is_complete(target, wanted)
    (target / ".s3-fetched.json").write_text("{not json")
    assert not fetched_copy_is_complete(target, wanted)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from musicrec import service_common

    monkeypatch.setattr(service_common, "FETCH_RETRY_S", 0.2)


def service_fetch(settings: Settings, root: Path, wanted: list[str]) -> None:
    from musicrec.service_common import fetch_artifacts_if_configured

    cfg = settings.model_copy(update={"artifacts_dir": root, "fetch_artifacts_from_s3": True})
    fetch_artifacts_if_configured(cfg, [root / rel for rel in wanted])


def test_service_fetch_waits_for_an_upload_under_way(
    s3_url: str, artifacts: Path, tmp_path: Path, quick_retries: None
) -> None:
    """A service starting while the pipeline uploads tries again until the upload is
    finished (it failed to start), within `fetch_wait_s`."""
    import threading

    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket, fetch_wait_s=30)
    upload_artifacts(settings, artifacts)
    admin(s3_url).put_object(
        Bucket=bucket, Key="recsys/recommendations/similar.parquet", Body=b"PAR1 similar v2"
    )
    (artifacts / "recommendations/similar.parquet").write_text("PAR1 similar v2")
    finish = threading.Timer(1.0, upload_artifacts, (settings, artifacts))
    finish.start()
    target = tmp_path / "service"
    wanted = ["recommendations/similar.parquet", "recommendations/top_popular.parquet"]
    try:
        service_fetch(settings, target, wanted)
    finally:
        finish.join()
    assert [(target / rel).read_text() for rel in wanted] == ["PAR1 similar v2", "PAR1 top"]
    # with no time to wait the upload under way is an error (no copy fetched before)
    admin(s3_url).put_object(
        Bucket=bucket, Key="recsys/recommendations/similar.parquet", Body=b"PAR1 similar v3"
    )
    impatient = settings.model_copy(update={"fetch_wait_s": 0.0})
    with pytest.raises(UploadInProgressError, match="upload under way"):
        service_fetch(impatient, tmp_path / "other", wanted)
    assert not (tmp_path / "other" / wanted[0]).exists()


def test_service_fetch_falls_back_to_a_complete_earlier_copy(
    s3_url: str,
    artifacts: Path,
    tmp_path: Path,
    quick_retries: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """S3 unreachable, or an upload that never finishes, at a restart: a service that
    fetched a complete copy before starts on it, with an error logged (it did not start);
    without such a copy the StorageError still stops it."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket, fetch_wait_s=3)  # room for a retry under load
    upload_artifacts(settings, artifacts)
    target = tmp_path / "service"
    wanted = ["recommendations/similar.parquet", "recommendations/top_popular.parquet"]
    service_fetch(settings, target, wanted)
    before = snapshot(target)
    down = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{closed_port()}"})
    with caplog.at_level(logging.ERROR, logger="musicrec"):
        service_fetch(down, target, wanted)
    assert (
        "cannot reach" in caplog.text and "serving the copy an earlier start fetched" in caplog.text
    )
    assert snapshot(target) == before
    # an upload stuck half-way for longer than fetch_wait_s: the same
    admin(s3_url).put_object(
        Bucket=bucket, Key="recsys/recommendations/similar.parquet", Body=b"PAR1 similar v2"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="musicrec"):
        service_fetch(settings, target, wanted)
    assert "trying again" in caplog.text and "serving the copy" in caplog.text
    assert snapshot(target) == before
    # no complete copy (one file edited locally): the error stops the start
    (target / wanted[1]).write_text("edited by hand")
    with pytest.raises(StorageError, match="cannot reach"):
        service_fetch(down, target, wanted)
    with pytest.raises(StorageError, match="cannot reach"):
        service_fetch(down, tmp_path / "fresh", wanted)


def test_services_fetching_into_one_folder_keep_each_others_files(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """The services share one artifacts folder by default: each fetch removed the files of
    the others' fetches (not in its own list), so every start downloaded them again and a
    restart with S3 down found no complete copy. Only files the upload no longer lists go."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    shared = tmp_path / "recsys"
    similar = ["recommendations/similar.parquet"]
    recs = ["recommendations/top_popular.parquet", "metrics.json"]
    download_artifacts(settings, shared, only=similar, reuse=True)
    download_artifacts(settings, shared, only=recs, reuse=True)
    assert all((shared / rel).is_file() for rel in similar + recs)
    assert fetched_copy_is_complete(shared, similar) and fetched_copy_is_complete(shared, recs)
    client = CountingClient(s3_client(settings))
    download_artifacts(settings, shared, client=client, only=similar, reuse=True)
    assert client.downloads == []  # kept, not fetched again
    # a file the latest upload no longer lists is still removed
    (artifacts / "metrics.json").unlink()
    upload_artifacts(settings, artifacts)
    download_artifacts(settings, shared, only=similar, reuse=True)
    assert not (shared / "metrics.json").exists() and (shared / similar[0]).is_file()


class _Proxy:
    """A boto3 client whose `hook(name, args)` runs after each call of a method it names
    (another upload acting in the middle of this one's calls)."""

    def __init__(self, client: Any, hooks: dict[str, Any]) -> None:
        self._client, self._hooks = client, hooks

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name not in self._hooks:
            return method

        def call(*args: Any, **kw: Any) -> Any:
            out = method(*args, **kw)
            self._hooks[name](*args, **kw)
            return out

        return call


def test_an_object_replaced_while_it_is_fetched_is_not_kept(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """The fetch checked every object against the manifest, then downloaded them by key:
    an upload that started after the check replaced a file not yet downloaded, and the
    service started on files of two uploads, `fetched_copy_is_complete` saying True (a
    review's reproducer). Each download is now checked against the ETag and size listed
    before the copy replaces anything."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    wanted = ["recommendations/similar.parquet", "recommendations/top_popular.parquet"]
    target = tmp_path / "service"

    def next_upload_begins(bucket_: str, key: str, filename: str, **kw: Any) -> None:
        admin(s3_url).put_object(Bucket=bucket_, Key=key, Body=b"PAR1 from the next upload")

    client = _Proxy(s3_client(settings), {"download_file": next_upload_begins})
    with pytest.raises(UploadInProgressError, match="changed while it was downloaded"):
        download_artifacts(settings, target, client=client, only=wanted, reuse=True)
    assert not [p for p in target.rglob("*.parquet")]  # nothing of either upload kept
    assert not fetched_copy_is_complete(target, wanted)
    upload_artifacts(settings, artifacts)  # the next upload completes: the fetch goes through
    download_artifacts(settings, target, only=wanted, reuse=True)
    assert fetched_copy_is_complete(target, wanted)
    assert (target / wanted[0]).read_bytes() == ARTIFACTS[wanted[0]]


class _LooseStore:
    """A client for an S3-compatible store that ignores `IfMatch` on HEAD and, with
    `unquote`, answers a HEAD with the ETag unquoted while its listing quotes it."""

    def __init__(self, client: Any, unquote: bool, hooks: dict[str, Any] | None = None) -> None:
        self._client, self._unquote = _Proxy(client, hooks or {}), unquote

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def head_object(self, **kw: Any) -> Any:
        kw.pop("IfMatch", None)
        head = self._client.head_object(**kw)
        if self._unquote:
            head["ETag"] = head["ETag"].strip('"')
        return head


def test_a_store_quoting_etags_its_own_way_is_fetched_from(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """ETags are compared without their quotes: a store that quotes them in its listing
    but not in a HEAD (whose answer the manifest records) made every fetch "an upload
    under way"."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts, client=_LooseStore(s3_client(settings), unquote=True))
    target = tmp_path / "service"
    wanted = ["recommendations/similar.parquet"]
    client = _LooseStore(s3_client(settings), unquote=True)
    download_artifacts(settings, target, client=client, only=wanted, reuse=True)
    assert (target / wanted[0]).read_bytes() == ARTIFACTS[wanted[0]]
    assert fetched_copy_is_complete(target, wanted)


def test_a_store_ignoring_if_match_still_has_a_replaced_object_refused(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """The check after each download asked the store (`IfMatch`) whether the object was
    unchanged: a store ignoring the condition let a replaced object through. The ETag and
    size of a plain HEAD are compared here instead."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)

    def next_upload_begins(bucket_: str, key: str, filename: str, **kw: Any) -> None:
        admin(s3_url).put_object(Bucket=bucket_, Key=key, Body=b"PAR1 from the next upload")

    hooks = {"download_file": next_upload_begins}
    client = _LooseStore(s3_client(settings), unquote=False, hooks=hooks)
    target = tmp_path / "service"
    with pytest.raises(UploadInProgressError, match="changed while it was downloaded"):
        download_artifacts(
            settings, target, client=client, only=["recommendations/similar.parquet"], reuse=True
        )
    assert not [p for p in target.rglob("*.parquet")]


def test_an_object_another_upload_overwrote_is_not_listed(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """Two uploads to one prefix at once: the manifest took each object's ETag from a
    `head_object` after the upload, which could be the other upload's object; the fetch
    then accepted a mix (a review's reproducer). Each object carries its upload's id: the
    upload that finds another's object stops and leaves the manifest as it was."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    manifest_before = bucket_objects(s3_url, bucket)["recsys/upload-manifest.json"]
    other = {"Metadata": {"musicrec-upload": "another-upload"}}

    def other_upload_writes(filename: str, bucket_: str, key: str, **kw: Any) -> None:
        admin(s3_url).put_object(Bucket=bucket_, Key=key, Body=b"PAR1 other", **other)

    client = _Proxy(s3_client(settings), {"upload_file": other_upload_writes})
    with pytest.raises(StorageError, match="overwritten by another upload to the same prefix"):
        upload_artifacts(settings, artifacts, client=client)
    assert bucket_objects(s3_url, bucket)["recsys/upload-manifest.json"] == manifest_before
    with pytest.raises(UploadInProgressError):  # the bucket's mix is refused, as before
        download_artifacts(settings, tmp_path / "service", reuse=True)


def test_a_local_optional_file_the_upload_lacks_is_removed(
    s3_url: str, artifacts: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The services share the pipeline's folder by default: a heard index a local run left
    there stayed beside lists fetched from an upload without one (two runs' files)."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    (artifacts / "recommendations/heard/tracks.npy").unlink()
    upload_artifacts(settings, artifacts)
    target = tmp_path / "service"
    write_tree(target, {"recommendations/heard/tracks.npy": b"a local run's index"})
    caplog.set_level(logging.WARNING, logger="musicrec.s3")
    only, optional = ["recommendations/top_popular.parquet"], ["recommendations/heard/tracks.npy"]
    download_artifacts(settings, target, only=only, optional=optional, reuse=True)
    assert not (target / optional[0]).exists()
    assert any("has no such file" in r.getMessage() for r in caplog.records)
    assert fetched_copy_is_complete(target, only, optional)


def test_a_fetch_removes_what_a_killed_fetch_left_and_uploads_never_send_it(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """A fetch killed outright left boto3's own temporary file beside atomic_path's
    (`.similar.parquet.X.tmp.1F4a8AFd`, as large as the file): nothing removed it, and an
    upload of the folder sent it as an artifact."""
    import os

    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    left = artifacts / "recommendations" / ".similar.parquet.k1ll3d.tmp.1F4a8AFd"
    left.write_bytes(b"half a download")
    assert "recsys/recommendations/.similar.parquet.k1ll3d.tmp.1F4a8AFd" not in [
        key for _, key in artifact_files(artifacts)
    ]
    upload_artifacts(settings, artifacts)
    target = tmp_path / "service"
    stale = target / "recommendations" / ".top_popular.parquet.k1ll3d.tmp.9zZ8yY7x"
    write_tree(target, {stale.relative_to(target).as_posix(): b"x" * 100})
    os.utime(stale, (1e9, 1e9))
    download_artifacts(settings, target, only=["recommendations/top_popular.parquet"], reuse=True)
    assert not stale.exists()


class _MinioHeads:
    """A client whose `head_object` answers metadata names capitalised, as boto3 passes
    them on from MinIO (`X-Amz-Meta-Musicrec-Upload` -> `Musicrec-Upload`)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def head_object(self, **kw: Any) -> Any:
        head = self._client.head_object(**kw)
        meta = head.get("Metadata") or {}
        head["Metadata"] = {
            "-".join(w.capitalize() for w in k.split("-")): v for k, v in meta.items()
        }
        return head


def test_the_upload_id_is_read_whatever_the_case_of_its_name(s3_url: str, artifacts: Path) -> None:
    """Every upload to MinIO failed as "overwritten by another upload": its metadata names
    come back capitalised (a review's reproducer, through a header-capitalising proxy)."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    keys = upload_artifacts(settings, artifacts, client=_MinioHeads(s3_client(settings)))
    assert len(keys) == len(ARTIFACTS)


def test_a_fetch_into_a_pipeline_folder_marks_it_unfinished(
    s3_url: str, artifacts: Path, tmp_path: Path
) -> None:
    """The services fetch into the pipeline's folder by default: lists of another run
    replaced the local ones beside the local data and models, run.json still said
    complete, and `upload` sent the mix. A fetch that changes a file there marks it
    unfinished; one that writes the same bytes leaves it alone."""
    from musicrec.artifacts import ArtifactPaths, RunState

    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    wanted = ["recommendations/top_popular.parquet"]
    local = tmp_path / "recsys"
    paths = ArtifactPaths(local)
    write_tree(local, {wanted[0]: ARTIFACTS[wanted[0]]})  # the same run's file
    RunState.write(paths, RunState.COMPLETE, stages={})
    download_artifacts(settings, local, only=wanted, reuse=True)
    assert RunState.unfinished_reason(paths) is None
    write_tree(local, {wanted[0]: b"PAR1 a local run's list"})
    (local / ".s3-fetched.json").unlink()
    download_artifacts(settings, local, only=wanted, reuse=True)
    reason = RunState.unfinished_reason(paths)
    assert reason is not None and reason.startswith("an S3 fetch replaced or removed 1 file")


# --- found by a mutation review of s3.py ---


def _attempts(**kw: Any) -> int:
    client = s3_client(make_settings("http://127.0.0.1:9", "b"), **kw)
    return int(client.meta.config.retries["total_max_attempts"])


def test_retries_default_to_three_attempts_and_never_fewer_than_one() -> None:
    assert _attempts() == _attempts(max_attempts=3)
    assert _attempts(max_attempts=0) == _attempts(max_attempts=-5) == _attempts(max_attempts=1)


class _Refusing:
    """A client whose head_bucket fails with an S3 error other than 403 / 404."""

    def __init__(self, code: str, message: str, status: int) -> None:
        self.response = {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }

    def head_bucket(self, **kw: Any) -> None:
        from botocore.exceptions import ClientError

        raise ClientError(self.response, "HeadBucket")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "expected"), [("SlowDown", "SlowDown Reduce your request rate"), ("", "503 ")]
)
def test_an_s3_error_names_its_code_else_the_http_status(
    tmp_path: Path, code: str, expected: str
) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    settings = make_settings("http://127.0.0.1:9", "b")
    client = _Refusing(code, "Reduce your request rate", 503)
    with pytest.raises(StorageError) as err:
        upload_artifacts(settings, tmp_path, client=client)
    assert f"S3 upload failed on bucket 'b' at http://127.0.0.1:9: {expected}" in str(err.value)


def test_the_upload_logs_how_much_it_sent(
    s3_url: str,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "als.npz").write_bytes(b"x" * 1_500_000)
    settings = make_settings(s3_url, new_bucket(s3_url))
    with caplog.at_level(logging.INFO, logger="musicrec.s3"):
        upload_artifacts(settings, tmp_path)
    assert "Uploaded 1 artifact files (1.5 MB)" in caplog.text


# --- bugs found by the same review ---


def test_max_attempts_counts_the_first_try() -> None:
    """s3_client's docstring: "`max_attempts` counts the first try (1 = no retry)". It is
    passed as botocore's `retries.max_attempts`, which counts the retries only."""
    client = s3_client(make_settings("http://127.0.0.1:9", "b"), max_attempts=1)
    assert client.meta.config.retries["total_max_attempts"] == 1


def test_a_manifest_entry_that_is_not_an_object_is_a_storage_error(
    s3_url: str,  # noqa: F811
    artifacts: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`_upload_manifest` checks that `files` is an object but not its entries: a damaged
    manifest made the services' start-up fetch die with an AttributeError traceback."""
    bucket = new_bucket(s3_url)
    settings = make_settings(s3_url, bucket)
    upload_artifacts(settings, artifacts)
    files = {rel: "damaged" for rel in ARTIFACTS}
    admin(s3_url).put_object(
        Bucket=bucket, Key=f"recsys/{UPLOAD_MANIFEST}", Body=json.dumps({"files": files})
    )
    with pytest.raises(StorageError, match="upload-manifest.json"):
        download_artifacts(settings, tmp_path / "service", reuse=True)
