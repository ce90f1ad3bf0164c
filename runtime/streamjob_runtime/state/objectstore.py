"""Object storage (``s3://bucket/prefix``) for checkpoints and savepoints, through s3fs.

Configuration comes from the usual AWS sources, read by botocore in every
process (JobManager and TaskManagers alike): ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the
config/credentials files, web-identity tokens (``AWS_ROLE_ARN`` +
``AWS_WEB_IDENTITY_TOKEN_FILE``, as IRSA sets them), ``AWS_REGION``, and the
endpoint of an S3-compatible store (MinIO, Ceph RGW...) from
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``.  ``STREAMJOB_S3_ADDRESSING_STYLE``
(``path`` or ``virtual``) overrides the addressing style; with a custom
endpoint botocore already uses path style.

Contracts: a :func:`put` is durable when it returns (no fsync exists); a
``put(..., exclusive=True)`` is a conditional PUT (``If-None-Match: *``) that
fails with :class:`FileExistsError` when the object exists; listings are never
cached (other processes write the same prefixes).  Large objects go up as
parallel multipart uploads (s3fs does this above 100 MB).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SCHEMES = ("s3",)


@dataclass(frozen=True)
class ObjectPath:
    """``s3://bucket/key``: the path-like subset the checkpoint code uses (``/``, name, parent)."""

    bucket: str
    key: str  # no leading or trailing "/"; "" is the bucket's root
    scheme: str = "s3"

    @classmethod
    def parse(cls, url: str) -> ObjectPath:
        scheme, _, rest = url.partition("://")
        if scheme not in SCHEMES:
            raise ValueError(
                f"{url!r} has the unsupported scheme {scheme!r}: use a local path, file://..."
                " or s3://bucket/prefix"
            )
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ValueError(f"{url!r} names no bucket: write s3://bucket/prefix")
        return cls(bucket, key.strip("/"), scheme)

    def __truediv__(self, name: str) -> ObjectPath:
        name = name.strip("/")
        return ObjectPath(self.bucket, f"{self.key}/{name}" if self.key else name, self.scheme)

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.bucket, self.key.rpartition("/")[0], self.scheme)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"

    @property
    def _fs_path(self) -> str:
        return f"{self.bucket}/{self.key}" if self.key else self.bucket


_lock = threading.Lock()
_filesystem: Any = None


def filesystem() -> Any:
    """This process's s3fs filesystem, created on first use from the environment."""
    global _filesystem
    with _lock:
        if _filesystem is None:
            import s3fs  # imported on first use: local-only deployments never load botocore

            config: dict[str, Any] = {}
            style = os.environ.get("STREAMJOB_S3_ADDRESSING_STYLE")
            if style:
                config["s3"] = {"addressing_style": style}
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            _filesystem = s3fs.S3FileSystem(
                endpoint_url=endpoint or None,
                config_kwargs=config,
                use_listings_cache=False,
                skip_instance_cache=True,
            )
        return _filesystem


def prepare() -> None:
    """Create the filesystem in the background: loading s3fs and botocore takes seconds,
    which the first checkpoint or sink call would otherwise spend (on a task's loop)."""
    with _lock:
        if _filesystem is not None:
            return
    threading.Thread(target=filesystem, name="s3-prepare", daemon=True).start()


def reset() -> None:
    """Forget the filesystem (tests that change the endpoint or credentials)."""
    global _filesystem
    with _lock:
        _filesystem = None


@contextlib.contextmanager
def _as_oserror(action: str, path: ObjectPath) -> Iterator[None]:
    """Every failure is an OSError, as on a filesystem (botocore's own errors are not)."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        raise OSError(f"{action} {path} failed: {type(e).__name__}: {e}") from e


def put(path: ObjectPath, data: bytes, exclusive: bool = False) -> int:
    """Upload ``data`` as one object; durable on return.  Returns its size."""
    with _as_oserror("uploading", path):
        fs = filesystem()
        if exclusive:
            try:
                fs.pipe_file(path._fs_path, data, mode="create")
            except Exception as e:
                if _is_precondition_failure(e):
                    raise FileExistsError(
                        f"{path} exists already (another writer got there)"
                    ) from e
                raise
        else:
            fs.pipe_file(path._fs_path, data)
    return len(data)


def _is_precondition_failure(error: BaseException) -> bool:
    response = getattr(error, "response", None) or getattr(error.__cause__, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or (
        "PreconditionFailed" in str(error)
    )


def read_bytes(path: ObjectPath) -> bytes:
    with _as_oserror("reading", path):
        data: bytes = filesystem().cat_file(path._fs_path)
    return data


def size(path: ObjectPath) -> int:
    with _as_oserror("reading the size of", path):
        info = filesystem().info(path._fs_path)
    if info.get("type") != "file":
        raise FileNotFoundError(str(path))
    return int(info["size"])


def names(directory: ObjectPath) -> list[str]:
    """Names directly under the prefix ``directory/`` (objects and common prefixes)."""
    try:
        with _as_oserror("listing", directory):
            entries = filesystem().ls(directory._fs_path, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    prefix = directory._fs_path.rstrip("/") + "/"
    found = []
    for entry in entries:
        entry = str(entry).rstrip("/")
        if entry.startswith(prefix):
            found.append(entry[len(prefix) :])
    return found


def delete_prefix(directory: ObjectPath, ignore_errors: bool = False) -> None:
    """Delete every object under ``directory/`` (never a sibling sharing its name's prefix)."""
    try:
        with _as_oserror("deleting", directory):
            fs = filesystem()
            keys = fs.find(directory._fs_path + "/")
            if keys:
                fs.rm(keys)
    except OSError:
        if not ignore_errors:
            raise


# -- multipart uploads (the exactly-once file sink's two-phase commit) ----------------------

PART_SIZE = 8 * 2**20  # S3's minimum is 5 MiB for every part but the last


def start_upload(path: ObjectPath) -> str:
    """Create a multipart upload of ``path``; the object stays invisible until completed."""
    with _as_oserror("starting an upload of", path):
        out = filesystem().call_s3("create_multipart_upload", Bucket=path.bucket, Key=path.key)
    return str(out["UploadId"])


def upload_parts(path: ObjectPath, upload_id: str, data: bytes) -> list[tuple[int, str]]:
    """Upload ``data`` as the parts of ``upload_id``; returns (part number, ETag) pairs."""
    parts = []
    with _as_oserror("uploading parts of", path):
        fs = filesystem()
        for number, start in enumerate(range(0, len(data), PART_SIZE), start=1):
            out = fs.call_s3(
                "upload_part",
                Bucket=path.bucket,
                Key=path.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data[start : start + PART_SIZE],
            )
            parts.append((number, str(out["ETag"])))
    return parts


def complete_upload(path: ObjectPath, upload_id: str, parts: list[tuple[int, str]]) -> None:
    """Make the uploaded parts the object ``path`` (atomically: all of it or nothing)."""
    with _as_oserror("completing the upload of", path):
        filesystem().call_s3(
            "complete_multipart_upload",
            Bucket=path.bucket,
            Key=path.key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]},
        )
        filesystem().invalidate_cache(path._fs_path)


def abort_upload(path: ObjectPath, upload_id: str) -> None:
    with _as_oserror("aborting the upload of", path):
        filesystem().call_s3(
            "abort_multipart_upload", Bucket=path.bucket, Key=path.key, UploadId=upload_id
        )


def pending_uploads(directory: ObjectPath, name_prefix: str) -> list[tuple[ObjectPath, str]]:
    """The multipart uploads in progress under ``directory/name_prefix``: (path, upload id)."""
    prefix = f"{directory.key}/{name_prefix}" if directory.key else name_prefix
    found = []
    with _as_oserror("listing the uploads under", directory):
        fs = filesystem()
        kwargs: dict[str, Any] = {"Bucket": directory.bucket, "Prefix": prefix}
        while True:
            out = fs.call_s3("list_multipart_uploads", **kwargs)
            for u in out.get("Uploads", []):
                found.append((ObjectPath(directory.bucket, u["Key"]), str(u["UploadId"])))
            if not out.get("IsTruncated"):
                return found
            kwargs["KeyMarker"] = out["NextKeyMarker"]
            kwargs["UploadIdMarker"] = out["NextUploadIdMarker"]


def exists(path: ObjectPath) -> bool:
    try:
        size(path)
    except FileNotFoundError:
        return False
    return True
