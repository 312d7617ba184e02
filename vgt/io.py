"""One place that resolves URIs: local paths and `s3://` (through s3fs / pyarrow).

Endpoint and credentials come from the standard AWS environment: `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
`AWS_DEFAULT_REGION`/`AWS_REGION`. Every stage (prep, training, serving) goes through here, so a
dataset, an AE folder or a run folder may live on either side.
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any, BinaryIO
from urllib.parse import urlparse

S3_SCHEMES = ("s3://", "s3a://")


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_SCHEMES)


def absolute(uri: str) -> str:
    """`uri` with a local path made absolute (S3 URIs unchanged): Ray workers and actors do not run in
    the caller's working directory, so a relative path handed to them would name another folder."""
    return str(uri) if is_s3(uri) else os.path.abspath(os.path.expanduser(str(uri)))


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    if is_s3(uri):
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def s3_options() -> dict[str, Any]:
    """s3fs keyword arguments from the standard AWS environment variables."""
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    opts: dict[str, Any] = {}
    if endpoint:
        opts["endpoint_url"] = endpoint
    if env.get("AWS_ACCESS_KEY_ID"):
        opts["key"] = env["AWS_ACCESS_KEY_ID"]
        opts["secret"] = env.get("AWS_SECRET_ACCESS_KEY")
    if env.get("AWS_SESSION_TOKEN"):
        opts["token"] = env["AWS_SESSION_TOKEN"]
    if region:
        opts["client_kwargs"] = {"region_name": region}
    return opts


def fsspec_fs(uri: str):
    """(fsspec filesystem, path without scheme) for `uri`."""
    if is_s3(uri):
        import s3fs

        # Listing caches would hide objects written by other processes (Ray workers).
        fs = s3fs.S3FileSystem(use_listings_cache=False, **s3_options())
        return fs, str(uri).split("://", 1)[1]
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), absolute(uri)


def pyarrow_fs(uri: str):
    """(pyarrow.fs.FileSystem, path without scheme) for `uri`: what Ray Data and Ray Train take."""
    import pyarrow.fs as pafs

    if not is_s3(uri):
        return pafs.LocalFileSystem(), absolute(uri)
    o = s3_options()
    kwargs: dict[str, Any] = {}
    if "endpoint_url" in o:
        parsed = urlparse(o["endpoint_url"])
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    if "key" in o:
        kwargs.update(access_key=o["key"], secret_key=o["secret"], session_token=o.get("token"))
    if "client_kwargs" in o:
        kwargs["region"] = o["client_kwargs"]["region_name"]
    return pafs.S3FileSystem(**kwargs), str(uri).split("://", 1)[1]


def open(uri: str, mode: str = "rb") -> BinaryIO:  # noqa: A001 - mirrors builtins.open
    fs, path = fsspec_fs(uri)
    if "w" in mode and not is_s3(uri):
        fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
    return fs.open(path, mode)


def exists(uri: str) -> bool:
    fs, path = fsspec_fs(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    """Create a local folder (S3 has no folders; a no-op there)."""
    if not is_s3(uri):
        os.makedirs(uri, exist_ok=True)


def ls(uri: str) -> list[str]:
    """Sorted entries directly under `uri`, as URIs of the same scheme."""
    fs, path = fsspec_fs(uri)
    if not fs.exists(path):
        return []
    return sorted(_with_scheme(uri, p) for p in fs.ls(path, detail=False))


def glob(pattern: str) -> list[str]:
    """Sorted URIs matching a glob (`*`, `?`, `[...]`, `**`)."""
    fs, path = fsspec_fs(pattern)
    return sorted(_with_scheme(pattern, p) for p in fs.glob(path))


def read_bytes(uri: str) -> bytes:
    with open(uri, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    with open(uri, "wb") as f:
        f.write(data)


def atomic_write_bytes(uri: str, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a partial one.

    Local: write a temp name in the same folder, then rename. S3: a single PUT is atomic already.
    """
    if is_s3(uri):
        write_bytes(uri, data)
        return
    tmp = f"{uri}.tmp-{uuid.uuid4().hex}"
    write_bytes(tmp, data)
    os.replace(tmp, uri)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any, atomic: bool = True) -> None:
    data = json.dumps(obj, indent=2, sort_keys=True).encode()
    (atomic_write_bytes if atomic else write_bytes)(uri, data)


def rm(uri: str, recursive: bool = False) -> None:
    fs, path = fsspec_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def local_copy(uri: str, dest_dir: str) -> str:
    """Download an s3:// folder to `dest_dir` (returns it); a local path is returned unchanged."""
    if not is_s3(uri):
        return uri
    fs, path = fsspec_fs(uri)
    fs.get(path.rstrip("/") + "/", dest_dir.rstrip("/") + "/", recursive=True)
    return dest_dir


def upload(local_dir: str, uri: str) -> None:
    """Copy a local folder to `uri` (local or s3://)."""
    fs, path = fsspec_fs(uri)
    if is_s3(uri):
        fs.put(local_dir.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)
    else:
        import shutil

        shutil.copytree(local_dir, path, dirs_exist_ok=True)


def _with_scheme(template: str, path: str) -> str:
    if is_s3(template):
        scheme = str(template).split("://", 1)[0]
        return f"{scheme}://{path}"
    return path
