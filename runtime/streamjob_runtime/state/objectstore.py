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

A job's ``s3.*`` options (:class:`~streamjob_runtime.config.S3Config`: endpoint,
region, path-style access, credentials provider) override those sources for
that job: they ride on its paths (:attr:`ObjectPath.options`), so every process
that handles the job's paths (JobManager, TaskManagers, the file sink) uses
them, and each distinct set of options has its own client.

Contracts: a :func:`put` is durable when it returns (no fsync exists); a
``put(..., exclusive=True)`` is a conditional PUT (``If-None-Match: *``) that
fails with :class:`FileExistsError` when the object exists; listings are never
cached (other processes write the same prefixes).  Objects of 2 parts
(:data:`PART_SIZE`) or more go up as multipart uploads of parallel parts; one
whose writer dies midway is aborted by :func:`abort_uploads` (the JobManager
calls it for the checkpoint prefixes, see ``checkpoint/store.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from streamjob_runtime import config

SCHEMES = ("s3",)


@dataclass(frozen=True)
class ObjectPath:
    """``s3://bucket/key``: the path-like subset the checkpoint code uses (``/``, name, parent)."""

    bucket: str
    key: str  # no leading or trailing "/"; "" is the bucket's root
    scheme: str = "s3"
    # The job's s3.* options (None: the process's environment); not part of the path's
    # identity, and kept by "/" and parent.
    options: config.S3Config | None = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, url: str, options: config.S3Config | None = None) -> ObjectPath:
        scheme, _, rest = url.partition("://")
        if scheme not in SCHEMES:
            raise ValueError(
                f"{url!r} has the unsupported scheme {scheme!r}: use a local path, file://..."
                " or s3://bucket/prefix"
            )
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ValueError(f"{url!r} names no bucket: write s3://bucket/prefix")
        return cls(bucket, key.strip("/"), scheme, _effective(options))

    def with_options(self, options: config.S3Config | None) -> ObjectPath:
        """This path, reached with ``options`` (a job's ``s3.*`` settings)."""
        return dataclasses.replace(self, options=_effective(options))

    def __truediv__(self, name: str) -> ObjectPath:
        name = name.strip("/")
        key = f"{self.key}/{name}" if self.key else name
        return ObjectPath(self.bucket, key, self.scheme, self.options)

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.bucket, self.key.rpartition("/")[0], self.scheme, self.options)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"

    @property
    def _fs_path(self) -> str:
        return f"{self.bucket}/{self.key}" if self.key else self.bucket


def _effective(options: config.S3Config | None) -> config.S3Config | None:
    """``None`` for options that change nothing (one client for them and the environment)."""
    return None if options is None or options == config.S3Config() else options


_lock = threading.Lock()
_filesystems: dict[config.S3Config | None, Any] = {}


def filesystem(options: config.S3Config | None = None) -> Any:
    """This process's s3fs filesystem for ``options`` (``None``: the environment alone),
    created on first use.  Raises OSError naming what is missing when the credentials
    provider the options name has nothing to work with in this process."""
    options = _effective(options)
    with _lock:
        fs = _filesystems.get(options)
        if fs is None:
            fs = _filesystems[options] = _create(options or config.S3Config())
        return fs


def _create(options: config.S3Config) -> Any:
    import s3fs  # imported on first use: local-only deployments never load botocore
    from aiobotocore import session as aiosession

    client_config: dict[str, Any] = {}
    style = os.environ.get("STREAMJOB_S3_ADDRESSING_STYLE")
    if options.path_style_access is not None:
        style = "path" if options.path_style_access else "virtual"
    if style:
        client_config["s3"] = {"addressing_style": style}
    endpoint = (
        options.endpoint
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    kwargs: dict[str, Any] = {}
    if options.region:
        kwargs["client_kwargs"] = {"region_name": options.region}
    provider = options.credentials_provider
    kinds = config.S3CredentialsProvider
    if provider is kinds.ANONYMOUS:
        kwargs["anon"] = True
    elif provider is kinds.PROFILE:
        kwargs["session"] = aiosession.AioSession(profile=options.profile)
    elif provider in (kinds.ENVIRONMENT, kinds.WEB_IDENTITY):
        needed, method = (
            (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "env")
            if provider is kinds.ENVIRONMENT
            else (("AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"), "assume-role-with-web-identity")
        )
        missing = [name for name in needed if not os.environ.get(name)]
        if missing:
            raise OSError(
                f"s3.credentials.provider is {provider.value} but {' and '.join(missing)}"
                f" {'is' if len(missing) == 1 else 'are'} not set in this process"
                f" (pid {os.getpid()}): set {', '.join(needed)} in the environment of every"
                " JobManager and TaskManager, or choose another s3.credentials.provider"
            )
        session = aiosession.AioSession()
        resolver = session.get_component("credential_provider")
        resolver.providers = [resolver.get_provider(method)]  # that source and no other
        kwargs["session"] = session
    return s3fs.S3FileSystem(
        endpoint_url=endpoint or None,
        config_kwargs=client_config,
        use_listings_cache=False,
        skip_instance_cache=True,
        **kwargs,
    )


def prepare(options: config.S3Config | None = None) -> None:
    """Create the filesystem in the background: loading s3fs and botocore takes seconds,
    which the first checkpoint or sink call would otherwise spend (on a task's loop)."""
    options = _effective(options)
    with _lock:
        if options in _filesystems:
            return

    def create() -> None:
        with contextlib.suppress(OSError):  # reported by the first real call
            filesystem(options)

    threading.Thread(target=create, name="s3-prepare", daemon=True).start()


def reset() -> None:
    """Forget the filesystems (tests that change the endpoint or credentials)."""
    with _lock:
        _filesystems.clear()


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
        fs = filesystem(path.options)
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
            # From 2 parts on, a multipart upload of parallel parts (aborted on an error).
            fs.pipe_file(path._fs_path, data, chunksize=PART_SIZE)
    return len(data)


def upload_file(path: ObjectPath, source: str | os.PathLike[str]) -> int:
    """Upload the local file ``source`` as ``path`` (streamed: multipart of parallel parts
    from 2 parts on); durable on return.  Returns its size."""
    with _as_oserror("uploading", path):
        filesystem(path.options).put_file(os.fspath(source), path._fs_path, chunksize=PART_SIZE)
    return os.stat(source).st_size


def download_file(path: ObjectPath, target: str | os.PathLike[str]) -> None:
    """Download ``path`` to the local file ``target`` (replaced if it exists)."""
    with _as_oserror("downloading", path):
        filesystem(path.options).get_file(path._fs_path, os.fspath(target))


def delete_objects(paths: list[ObjectPath]) -> None:
    """Delete objects by name (missing ones are fine); batched, as S3 allows 1000 a call."""
    if not paths:
        return
    with _as_oserror("deleting", paths[0]):
        fs = filesystem(paths[0].options)
        for i in range(0, len(paths), 1000):
            batch = paths[i : i + 1000]
            out = fs.call_s3(
                "delete_objects",
                Bucket=batch[0].bucket,
                Delete={"Objects": [{"Key": p.key} for p in batch], "Quiet": True},
            )
            if out.get("Errors"):
                raise OSError(f"deleting {len(out['Errors'])} objects failed: {out['Errors'][:3]}")
            for p in batch:
                fs.invalidate_cache(p._fs_path)


def _is_precondition_failure(error: BaseException) -> bool:
    response = getattr(error, "response", None) or getattr(error.__cause__, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or (
        "PreconditionFailed" in str(error)
    )


def read_bytes(path: ObjectPath) -> bytes:
    with _as_oserror("reading", path):
        data: bytes = filesystem(path.options).cat_file(path._fs_path)
    return data


def size(path: ObjectPath) -> int:
    with _as_oserror("reading the size of", path):
        info = filesystem(path.options).info(path._fs_path)
    if info.get("type") != "file":
        raise FileNotFoundError(str(path))
    return int(info["size"])


def names(directory: ObjectPath) -> list[str]:
    """Names directly under the prefix ``directory/`` (objects and common prefixes)."""
    try:
        with _as_oserror("listing", directory):
            entries = filesystem(directory.options).ls(
                directory._fs_path, detail=False, refresh=True
            )
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
    """Delete every object under ``directory/`` (never a sibling sharing its name's prefix),
    and abort the multipart uploads in progress there."""
    try:
        with _as_oserror("deleting", directory):
            fs = filesystem(directory.options)
            keys = fs.find(directory._fs_path + "/")
            if keys:
                fs.rm(keys)
        abort_uploads(directory)
    except OSError:
        if not ignore_errors:
            raise


# -- multipart uploads (the exactly-once file sink's two-phase commit) ----------------------

PART_SIZE = 8 * 2**20  # S3's minimum is 5 MiB for every part but the last


def start_upload(path: ObjectPath) -> str:
    """Create a multipart upload of ``path``; the object stays invisible until completed."""
    with _as_oserror("starting an upload of", path):
        out = filesystem(path.options).call_s3(
            "create_multipart_upload", Bucket=path.bucket, Key=path.key
        )
    return str(out["UploadId"])


def upload_parts(path: ObjectPath, upload_id: str, data: bytes) -> list[tuple[int, str]]:
    """Upload ``data`` as the parts of ``upload_id``; returns (part number, ETag) pairs."""
    parts = []
    with _as_oserror("uploading parts of", path):
        fs = filesystem(path.options)
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
        fs = filesystem(path.options)
        fs.call_s3(
            "complete_multipart_upload",
            Bucket=path.bucket,
            Key=path.key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]},
        )
        fs.invalidate_cache(path._fs_path)


def abort_upload(path: ObjectPath, upload_id: str) -> None:
    with _as_oserror("aborting the upload of", path):
        filesystem(path.options).call_s3(
            "abort_multipart_upload", Bucket=path.bucket, Key=path.key, UploadId=upload_id
        )


def pending_uploads(directory: ObjectPath, name_prefix: str) -> list[tuple[ObjectPath, str]]:
    """The multipart uploads in progress under ``directory/name_prefix``: (path, upload id)."""
    prefix = f"{directory.key}/{name_prefix}" if directory.key else name_prefix
    found = []
    with _as_oserror("listing the uploads under", directory):
        fs = filesystem(directory.options)
        kwargs: dict[str, Any] = {"Bucket": directory.bucket, "Prefix": prefix}
        while True:
            out = fs.call_s3("list_multipart_uploads", **kwargs)
            for u in out.get("Uploads", []):
                path = ObjectPath(directory.bucket, u["Key"], directory.scheme, directory.options)
                found.append((path, str(u["UploadId"])))
            if not out.get("IsTruncated"):
                return found
            kwargs["KeyMarker"] = out["NextKeyMarker"]
            kwargs["UploadIdMarker"] = out["NextUploadIdMarker"]


def abort_uploads(
    directory: ObjectPath, abandoned: Callable[[ObjectPath], bool] | None = None
) -> list[ObjectPath]:
    """Abort the multipart uploads in progress under ``directory/`` (those for which
    ``abandoned(path)`` is true, when given); returns the paths of the aborted uploads.

    An upload nobody completes or aborts (its writer was SIGKILLed, or the checkpoint
    it belonged to was aborted) is invisible but stored, and billed, until aborted.
    One that is gone already (a concurrent abort) is not an error.
    """
    aborted = []
    for path, upload_id in pending_uploads(directory, ""):
        if abandoned is not None and not abandoned(path):
            continue
        try:
            abort_upload(path, upload_id)
        except OSError as e:
            if "NoSuchUpload" not in str(e):
                raise
        aborted.append(path)
    return aborted


def exists(path: ObjectPath) -> bool:
    try:
        size(path)
    except FileNotFoundError:
        return False
    return True
