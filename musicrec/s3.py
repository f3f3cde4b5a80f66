"""Upload the artifacts to S3 (or any S3-compatible store) and fetch them back.

Layout in the bucket mirrors the artifacts directory under a top folder `recsys/`:

    {prefix}recsys/data/...             <- {artifacts_dir}/data/...
    {prefix}recsys/recommendations/...  <- {artifacts_dir}/recommendations/...
    {prefix}recsys/model/...            <- {artifacts_dir}/model/...
    {prefix}recsys/pictures/...         <- {artifacts_dir}/pictures/...
    {prefix}recsys/metrics.json         <- {artifacts_dir}/metrics.json

`prefix` is `Settings.s3_prefix`, treated as a folder ("runs/42" -> "runs/42/recsys/...").

An upload ends with `{prefix}recsys/upload-manifest.json`: every file it wrote, with the
ETag and size the store gave it. A download (the services' start-up fetch) reads it first
and takes only the files it lists, each as listed: an object that differs from its entry
means an upload is under way (or stopped half-way), and the download stops with a
`StorageError` before writing anything instead of mixing two runs' files; objects left
from earlier runs are ignored, and a file fetched before that the manifest no longer lists
is removed. A bucket written before manifests existed is read as before. A fetch into a
directory records which upload each file came from, so `fetched_copy_is_complete` can tell
a consistent earlier fetch (what a service may serve when S3 fails at its next start) from
a mix.
Configuration comes from `Settings`: S3_BUCKET_NAME, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (else boto3's default credential chain), S3_ENDPOINT_URL,
AWS_DEFAULT_REGION. Failures raise `StorageError` naming the bucket and endpoint; the
secret key never appears in a message or a log line. Local files are only read by the
upload; the download writes each file atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import json
import logging
import os
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from musicrec.artifacts import ArtifactPaths, RunState
from musicrec.errors import StorageError, UploadInProgressError
from musicrec.io import atomic_path, read_json, remove_stale_temporaries, write_json
from musicrec.settings import Settings

__all__ = [
    "ARTIFACT_DIRS",
    "ARTIFACT_FILES",
    "TOP_FOLDER",
    "artifact_files",
    "download_artifacts",
    "fetched_copy_is_complete",
    "s3_client",
    "upload_artifacts",
]

log = logging.getLogger(__name__)

#: top folder of every key in the bucket
TOP_FOLDER = "recsys"
#: sub-directories of the artifacts directory that are uploaded (recursively)
ARTIFACT_DIRS = ("data", "recommendations", "model", "pictures")
#: single files at the top of the artifacts directory that are uploaded
ARTIFACT_FILES = ("metrics.json",)
#: what `download_artifacts(reuse=True)` fetched: per file the object's ETag and size, the
#: local copy's size and mtime, and the upload manifest's ETag at the time (at the top of
#: the artifacts directory, never uploaded)
FETCH_MANIFEST = ".s3-fetched.json"
#: the lock that lets one process at a time fetch into an artifacts directory
FETCH_LOCK = ".s3-fetch.lock"
#: written last by an upload: the files of that upload (see the module docstring)
UPLOAD_MANIFEST = "upload-manifest.json"
#: the user metadata key (`x-amz-meta-...`) that holds the id of the upload that wrote an
#: object
UPLOAD_ID_META = "musicrec-upload"

_ACCESS_DENIED = {
    "403",
    "AccessDenied",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "Forbidden",
}
_NO_BUCKET = {"404", "NoSuchBucket", "NotFound"}


# ------------------------------------------------------------------------------- client
def s3_client(
    settings: Settings,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    max_attempts: int = 3,
) -> Any:
    """A boto3 S3 client for `settings`.

    Credentials: the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY settings when both are set,
    otherwise boto3's default chain (environment, ~/.aws, instance role). A custom
    endpoint (S3_ENDPOINT_URL: MinIO, Yandex Object Storage, moto...) is honoured and gets
    path-style addressing and checksums only when required, which S3-compatible stores
    accept. `max_attempts` counts the first try (1 = no retry).
    """
    import boto3
    from botocore.config import Config

    key_id = settings.aws_access_key_id.get_secret_value() if settings.aws_access_key_id else None
    secret = (
        settings.aws_secret_access_key.get_secret_value()
        if settings.aws_secret_access_key
        else None
    )
    if bool(key_id) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if key_id else "AWS_ACCESS_KEY_ID"
        raise StorageError(f"incomplete S3 credentials: {missing} is not set")
    endpoint = settings.s3_endpoint_url or None
    options: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        # total_max_attempts counts the first try; botocore's max_attempts counts only retries
        "retries": {"total_max_attempts": max(1, max_attempts), "mode": "standard"},
    }
    if endpoint:
        options["s3"] = {"addressing_style": "path"}
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    try:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=settings.s3_region or None,
            aws_access_key_id=key_id or None,
            aws_secret_access_key=secret or None,
            config=Config(**options),
        )
    except ValueError as exc:  # botocore's "Invalid endpoint: ..." (no scheme, bad port)
        raise StorageError(
            f"S3_ENDPOINT_URL {endpoint!r} is not a valid URL (e.g. http://host:9000): {exc}"
        ) from None


# ------------------------------------------------------------------------------ helpers
def _prefix(settings: Settings) -> str:
    """The key prefix before `recsys/`, as a folder ('' or ending with '/')."""
    p = (settings.s3_prefix or "").strip().strip("/")
    return f"{p}/" if p else ""


def _base(settings: Settings) -> str:
    return f"{_prefix(settings)}{TOP_FOLDER}/"


def _where(settings: Settings) -> str:
    return settings.s3_endpoint_url or f"AWS S3 (region {settings.s3_region})"


def _is_temporary(path: Path) -> bool:
    """Half-written files of `musicrec.io.atomic_path` ('.name.xxxx.tmp') and of boto3's
    download into one ('.name.xxxx.tmp.1F4a8AFd')."""
    name = path.name
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp." in name)


def _etag(value: Any) -> str | None:
    """An ETag as compared here: without the quotes and the weak mark `W/` some stores
    add and others leave out (S3 and MinIO send `"abc"`; a store may list `abc` and answer
    a HEAD with `"abc"`)."""
    if value is None:
        return None
    text = str(value).strip()
    if text.startswith("W/"):
        text = text[2:]
    return text.strip('"')


def _files_below(folder: Path) -> list[Path]:
    """Every file below `folder`, sorted, through symbolic links to folders as to files
    (`Path.rglob` skips linked folders silently before Python 3.13); a link back to a
    folder already being walked is not entered again."""
    found: list[Path] = []
    walking = {os.path.realpath(folder)}
    for here, dirs, files in os.walk(folder, followlinks=True):
        entered = []
        for name in sorted(dirs):
            real = os.path.realpath(os.path.join(here, name))
            if real in walking:
                log.warning("skipped: %s is the folder %s, walked already", Path(here, name), real)
                continue
            walking.add(real)
            entered.append(name)
        dirs[:] = entered
        found += [Path(here, name) for name in files]
    return sorted(found)


def artifact_files(artifacts_dir: str | Path) -> list[tuple[Path, str]]:
    """(local file, key relative to the prefix) for every artifact to upload, sorted."""
    root = Path(artifacts_dir)
    found: list[tuple[Path, str]] = []
    for sub in ARTIFACT_DIRS:
        d = root / sub
        if not d.is_dir():
            continue
        for p in _files_below(d):
            if p.is_file() and not _is_temporary(p):
                found.append((p, f"{TOP_FOLDER}/{p.relative_to(root).as_posix()}"))
    for name in ARTIFACT_FILES:
        p = root / name
        if p.is_file():
            found.append((p, f"{TOP_FOLDER}/{name}"))
    return found


def _relative_target(rel: str) -> PurePosixPath | None:
    """The local relative path of a key below `{prefix}recsys/`, or None to skip it."""
    if not rel or rel.endswith("/"):
        return None
    path = PurePosixPath(rel)
    if path.is_absolute() or any(part in ("", ".", "..") for part in path.parts):
        return None
    if str(path) in ARTIFACT_FILES or (len(path.parts) > 1 and path.parts[0] in ARTIFACT_DIRS):
        return path
    return None


def _error(exc: BaseException, settings: Settings, action: str) -> StorageError:
    """A StorageError that names the bucket and endpoint, with no secret in it."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    bucket, where = settings.s3_bucket_name, _where(settings)
    target = f"bucket '{bucket}' at {where}"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        msg = (
            f"{action} failed: no AWS credentials for {target} "
            "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    elif isinstance(
        exc,
        EndpointConnectionError | ConnectTimeoutError | ConnectionClosedError | ReadTimeoutError,
    ):
        msg = f"{action} failed: cannot reach the S3 endpoint {where} (bucket '{bucket}'): {exc}"
    elif isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "")) or str(
            exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        )
        if code in _NO_BUCKET:
            msg = f"{action} failed: S3 bucket '{bucket}' does not exist at {where}"
        elif code in _ACCESS_DENIED:
            msg = (
                f"{action} failed: access denied to {target} ({code}); check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions"
            )
        else:
            msg = f"{action} failed on {target}: {code} {err.get('Message', '')}".rstrip()
    elif isinstance(exc, S3UploadFailedError):
        msg = f"{action} failed on {target}: {exc}"
    else:
        msg = f"{action} failed on {target}: {type(exc).__name__}: {exc}"
    secret = settings.aws_secret_access_key
    if secret is not None and secret.get_secret_value():
        msg = msg.replace(secret.get_secret_value(), "***")
    return StorageError(msg)


def _check_bucket(client: Any, settings: Settings, action: str) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_bucket(Bucket=settings.s3_bucket_name)
    except (ClientError, BotoCoreError) as exc:
        raise _error(exc, settings, action) from None


# --------------------------------------------------------------------------- public API
def upload_artifacts(
    settings: Settings, artifacts_dir: str | Path, *, client: Any = None
) -> list[str]:
    """Upload every artifact file (see the module docstring) to S3; return the keys.

    Without S3_BUCKET_NAME this logs one info line and returns []. The bucket is checked
    first (head_bucket); wrong credentials, a missing bucket or an unreachable endpoint
    raise `StorageError`. Local files are never modified. `client` overrides `s3_client`.
    """
    if not settings.s3_bucket_name:
        log.info("S3 upload skipped: S3_BUCKET_NAME is not set")
        return []
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = settings.s3_bucket_name
    files = artifact_files(artifacts_dir)
    client = client if client is not None else s3_client(settings)
    _check_bucket(client, settings, "S3 upload")
    if not files:
        log.warning("S3 upload: no artifacts found under %s", Path(artifacts_dir))
        return []
    prefix = _prefix(settings)
    keys: list[str] = []
    listed: dict[str, dict[str, Any]] = {}
    size = 0
    # each object carries this upload's id: the ETag the manifest lists is then this
    # upload's object's, not one another upload to the prefix wrote meanwhile
    upload_id = uuid.uuid4().hex
    for path, rel_key in files:
        key = prefix + rel_key
        try:
            client.upload_file(
                str(path), bucket, key, ExtraArgs={"Metadata": {UPLOAD_ID_META: upload_id}}
            )
            head = client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise _error(exc, settings, f"S3 upload of {path}") from None
        # S3 lower-cases metadata names; MinIO keeps the case it sends (Musicrec-Upload),
        # and botocore passes that on
        meta = {str(k).lower(): v for k, v in (head.get("Metadata") or {}).items()}
        if meta.get(UPLOAD_ID_META) != upload_id:
            raise StorageError(
                f"S3 upload to s3://{bucket}/{_base(settings)} ({_where(settings)}): {key} "
                "was overwritten by another upload to the same prefix while this one ran; "
                f"{UPLOAD_MANIFEST} is left as it was (fetches refuse the mix): upload "
                "again once the other has finished"
            )
        log.debug("Uploaded %s -> s3://%s/%s", path, bucket, key)
        keys.append(key)
        listed[rel_key[len(TOP_FOLDER) + 1 :]] = {
            "etag": _etag(head.get("ETag")),
            "size": head.get("ContentLength"),
        }
        size += path.stat().st_size
    manifest_key = _base(settings) + UPLOAD_MANIFEST
    body = json.dumps({"files": listed}, indent=1, sort_keys=True).encode()
    try:  # last: until it is replaced, downloads see the previous upload as unfinished
        client.put_object(Bucket=bucket, Key=manifest_key, Body=body)
    except (ClientError, BotoCoreError, Boto3Error) as exc:
        raise _error(exc, settings, "S3 upload of the upload manifest") from None
    log.info(
        "Uploaded %d artifact files (%.1f MB) to s3://%s/%s",
        len(keys),
        size / 1e6,
        bucket,
        _base(settings),
    )
    return keys


def download_artifacts(
    settings: Settings,
    artifacts_dir: str | Path,
    *,
    client: Any = None,
    only: Collection[str] | None = None,
    optional: Collection[str] = (),
    reuse: bool = False,
) -> list[Path]:
    """Fetch the artifacts uploaded by `upload_artifacts` into `artifacts_dir`.

    Each file is written atomically (a service starting meanwhile never reads half a
    file); keys outside the artifact layout are ignored. `only`: the paths relative to
    `artifacts_dir` to fetch (e.g. "recommendations/similar.parquet": what one service
    reads), every artifact when None; one of them missing from the bucket is a
    `StorageError`. `optional`: further paths fetched when the bucket has them (artifacts
    that older pipeline runs did not write). Without S3_BUCKET_NAME this logs one info
    line and returns []. Errors raise `StorageError` like the upload.

    `reuse` (what the services use): hold an exclusive lock on the directory while
    fetching, and keep a local file that an earlier fetch wrote from the same object (same
    ETag and size in the bucket; the local file's size and mtime as that fetch left them)
    instead of downloading it again. So the workers of one service, started together,
    download each file once, and a restart downloads only what changed. Returns the local
    paths of the files fetched or kept.
    """
    if not settings.s3_bucket_name:
        log.info("S3 download skipped: S3_BUCKET_NAME is not set")
        return []
    bucket = settings.s3_bucket_name
    client = client if client is not None else s3_client(settings)
    _check_bucket(client, settings, "S3 download")
    root = Path(artifacts_dir)
    lock = _fetch_lock(root) if reuse else contextlib.nullcontext()
    with lock:
        return _download(settings, bucket, client, root, only, optional, reuse)


@contextlib.contextmanager
def _fetch_lock(root: Path) -> Iterator[None]:
    """An exclusive `flock` on `root/FETCH_LOCK` (blocking; released on exit, or by the OS
    when the process dies)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / FETCH_LOCK, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_wanted(rel: str, only: Collection[str] | None, optional: Collection[str]) -> bool:
    """Whether a download with these `only` / `optional` lists fetches `rel`."""
    return only is None or rel in only or rel in optional


def _upload_manifest(client: Any, bucket: str, key: str) -> tuple[dict[str, Any] | None, Any]:
    """The `files` of the bucket's upload manifest and the manifest's ETag (which upload
    it is); (None, None) when it has none (an upload from before manifests existed)."""
    from botocore.exceptions import ClientError

    try:
        got = client.get_object(Bucket=bucket, Key=key)
        body = got["Body"].read()
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404"):
            return None, None
        raise
    try:
        files = json.loads(body)["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
        bad = sorted(str(rel) for rel, entry in files.items() if not isinstance(entry, dict))
        if bad:  # each entry {"etag": ..., "size": ...}: a damaged one stopped the fetch
            raise TypeError(f"the entry of {bad[0]} is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"s3://{bucket}/{key}: not a readable upload manifest ({exc})") from None
    return files, got.get("ETag")


def _as_listed(
    wanted: dict[str, tuple[str, dict[str, Any]]],
    listed: dict[str, Any],
    only: Collection[str] | None,
    optional: Collection[str],
    settings: Settings,
    bucket: str,
    base: str,
) -> dict[str, tuple[str, dict[str, Any]]]:
    """`wanted` restricted to the upload manifest's files; `StorageError` when one of them
    is missing or differs from its entry (an upload under way or stopped half-way)."""
    wanted_listed = {rel: got for rel, got in wanted.items() if rel in listed}
    expected = [rel for rel in listed if _is_wanted(rel, only, optional)]
    # an upload overwrites objects and never deletes one: a listed object that is gone
    # will not come back by waiting (it was waited for as "an upload under way")
    gone = sorted(rel for rel in expected if rel not in wanted)
    if gone:
        raise StorageError(
            f"S3 download from s3://{bucket}/{base} ({_where(settings)}): "
            f"{', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''} listed in "
            f"{UPLOAD_MANIFEST} but not in the bucket (deleted?); nothing was fetched: "
            "upload the artifacts again"
        )
    changed = sorted(
        rel
        for rel in expected
        if {"etag": _etag(listed[rel].get("etag")), "size": listed[rel].get("size")}
        != wanted[rel][1]
    )
    if changed:
        raise UploadInProgressError(
            f"S3 download from s3://{bucket}/{base} ({_where(settings)}): "
            f"{', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} differ from "
            f"{UPLOAD_MANIFEST} (an upload under way or stopped half-way); nothing was "
            "fetched: retry once the upload has finished"
        )
    ignored = sorted(set(wanted) - set(wanted_listed))
    if ignored:
        log.info("S3 download: ignoring %d objects of earlier uploads: %s", len(ignored), ignored)
    return wanted_listed


def _check_unchanged(
    client: Any, settings: Settings, bucket: str, key: str, remote: dict[str, Any]
) -> None:
    """After a download: the object must still be the one listed before it (same ETag and
    size), or an upload replaced it meanwhile and the local copy may be the other upload's,
    or a mix of both (a multipart download reads ranges); `UploadInProgressError` then,
    before the copy replaces anything (a fetch beside an upload started after its check
    made a mix and called it complete). A plain HEAD compared here rather than `IfMatch`:
    a store that ignores the condition would let every change through, and one that wants
    the tag quoted otherwise than it lists it would refuse every fetch."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
        now = {"etag": _etag(head.get("ETag")), "size": head.get("ContentLength")}
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) not in ("404", "NoSuchKey"):
            raise
        now = None
    if now != {"etag": remote["etag"], "size": remote["size"]}:
        raise UploadInProgressError(
            f"S3 download from s3://{bucket}/{_base(settings)} ({_where(settings)}): {key} "
            "changed while it was downloaded (an upload under way); the copy was discarded: "
            "retry once the upload has finished"
        ) from None


def _local_state(path: Path) -> list[int] | None:
    """[size, mtime_ns] of a local file, None if it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _download(
    settings: Settings,
    bucket: str,
    client: Any,
    root: Path,
    only: Collection[str] | None,
    optional: Collection[str],
    reuse: bool,
) -> list[Path]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    base = _base(settings)
    # what a fetch killed outright left (each as large as the file it was fetching)
    files, size = remove_stale_temporaries(root) if root.is_dir() else (0, 0)
    if files:
        log.info("removed %d temporary files (%.1f MB) of an interrupted fetch", files, size / 1e6)
    manifest = _fetch_record(root) if reuse else {}
    written: list[Path] = []
    replaced: list[Path] = []  # written with other bytes than the local file had, or removed
    paths = ArtifactPaths(root)
    tracked = paths.run_state.exists()  # the pipeline's folder (the default)
    kept: list[Path] = []
    record_changed = False  # other than by a download: the record is written again
    try:
        # every wanted object first, checked against the upload manifest, then the fetch:
        # nothing is written from a bucket in the middle of an upload
        wanted: dict[str, tuple[str, dict[str, Any]]] = {}
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                rel = _relative_target(key[len(base) :])
                if rel is None:
                    log.debug("Skipping s3://%s/%s (not an artifact)", bucket, key)
                    continue
                if not _is_wanted(str(rel), only, optional):
                    continue
                remote = {"etag": _etag(obj.get("ETag")), "size": obj.get("Size")}
                wanted[str(rel)] = (key, remote)
        listed, upload = _upload_manifest(client, bucket, base + UPLOAD_MANIFEST)
        if listed is not None:
            wanted = _as_listed(wanted, listed, only, optional, settings, bucket, base)
            # fetched before, no longer part of the bucket's upload: stale. Only those: a
            # file of the upload this call does not want is another service's (the services
            # share one folder by default), which removing it made download again at every
            # start, and a restart without S3 found no copy to serve
            if reuse:
                for name in [n for n in manifest if n not in listed]:
                    (root / name).unlink(missing_ok=True)
                    del manifest[name]
                    record_changed = True
            # an optional file the upload lacks, left locally by another run (the default
            # folder is the pipeline's too): served beside this upload's files, it mixed
            # two runs (the heard index of a local run with the bucket's lists)
            for name in sorted(set(optional) - set(listed)):
                if (root / name).is_file():
                    log.warning(
                        "S3 download: removing %s: the bucket's upload has no such file, so "
                        "it is another run's",
                        root / name,
                    )
                    (root / name).unlink()
                    replaced.append(root / name)
                    manifest.pop(name, None)
                    record_changed = True
        for name, (key, remote) in sorted(wanted.items()):
            target = _local_path(root, name)
            entry = manifest.get(name)
            if (
                reuse
                and isinstance(entry, dict)
                and entry.get("remote") == remote
                and entry.get("local") == _local_state(target)
            ):
                kept.append(target)
                if entry.get("upload") != upload:  # the same object, listed by a newer upload
                    entry["upload"] = upload
                    record_changed = True
                continue
            with atomic_path(target) as tmp:
                client.download_file(bucket, key, str(tmp))
                _check_unchanged(client, settings, bucket, key, remote)
                # compared only where a run's run.json is there to mark (a service's own
                # folder has none: no second read of every file it fetches)
                if tracked and not (target.is_file() and filecmp.cmp(tmp, target, shallow=False)):
                    replaced.append(target)
            written.append(target)
            manifest[name] = {"remote": remote, "local": _local_state(target), "upload": upload}
    except (ClientError, BotoCoreError, Boto3Error) as exc:
        # Boto3Error: e.g. RetriesExceededError, a body cut off on every attempt
        raise _error(exc, settings, "S3 download") from None
    finally:
        if reuse and (written or record_changed):
            write_json(manifest, root / FETCH_MANIFEST)
        if replaced and tracked:
            what = f"an S3 fetch replaced or removed {len(replaced)} file(s) of the run here"
            RunState.write(paths, RunState.UNFINISHED, what=what)
    found = written + kept
    if only is not None:
        missing = sorted(set(only) - {p.relative_to(root).as_posix() for p in found})
        if missing:
            raise StorageError(
                f"S3 download from s3://{bucket}/{base} ({_where(settings)}): "
                f"{', '.join(missing)} not in the bucket"
            )
    if found:
        log.info(
            "Downloaded %d artifact files from s3://%s/%s%s",
            len(written),
            bucket,
            base,
            f" (kept {len(kept)} unchanged ones fetched before)" if kept else "",
        )
    else:
        log.warning("S3 download: no artifacts under s3://%s/%s", bucket, base)
    return found


def fetched_copy_is_complete(
    artifacts_dir: str | Path, only: Collection[str], optional: Collection[str] = ()
) -> bool:
    """Whether `artifacts_dir` holds, from earlier `download_artifacts(reuse=True)` calls,
    every file of `only` (and each of `optional` that was fetched), untouched since and all
    from one upload (the same upload manifest): a consistent copy to serve when S3 fails.

    False for anything less: a file missing or changed locally, a fetch that stopped
    half-way (files of two uploads), a record from before uploads were recorded, or an
    unreadable record."""
    root = Path(artifacts_dir)
    record = _fetch_record(root)
    names = [*only, *(o for o in optional if o in record)]
    entries: list[dict[str, Any]] = []
    for name in names:
        entry = record.get(name)
        if not isinstance(entry, dict) or "upload" not in entry:
            return False
        entries.append(entry)
    return (
        bool(entries)
        and all(e["upload"] == entries[0]["upload"] for e in entries)
        and all(
            e.get("local") == _local_state(_local_path(root, n))
            for n, e in zip(names, entries, strict=True)
        )
    )


def _fetch_record(root: Path) -> dict[str, Any]:
    """What earlier fetches into `root` recorded (`FETCH_MANIFEST`); {} when there is none
    or it is unreadable (everything is then fetched again, and no copy counts as complete).
    Only names a fetch could have written are kept: the fetch removes recorded files the
    bucket no longer lists, and a record edited to name `../x` or `/x` removed those."""
    try:
        record = read_json(root / FETCH_MANIFEST)
    except ValueError:
        return {}
    if not isinstance(record, dict):
        return {}
    return {name: e for name, e in record.items() if str(_relative_target(name)) == name}


def _local_path(root: Path, name: str) -> Path:
    """The local file of an artifact's relative name (`recommendations/similar.parquet`)."""
    return root.joinpath(*PurePosixPath(name).parts)
