"""Turn `--input [TAG=]URI` arguments into the list of output parts (one per input file).

A URI may be a file, a folder (its files with a known suffix, not recursive), a glob (`*`, `?`,
`[..]`, `**`) or `@LIST` (a text file naming one URI per line). The tag defaults to the folder
name (or the file stem for a single file). Part names are `part-<tag>-<file stem>`, so the mapping
from input files to parts is deterministic and does not shift when files are added.
"""
from __future__ import annotations

import hashlib
import posixpath
import re

from vgt import io as vio
from vgt.data.sources import FORMAT_SUFFIXES, detect_format, shard_stem
from vgt.errors import UsageError

class InputError(UsageError):
    """A malformed --input argument (bad tag, unknown file type)."""


_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SUFFIXES = tuple(s for suffixes in FORMAT_SUFFIXES.values() for s in suffixes)


def parse_input(arg: str) -> tuple[str | None, str]:
    """`tag=uri` -> (tag, uri); a bare uri -> (None, uri). `s3://` never counts as a tag."""
    head, sep, tail = arg.partition("=")
    if sep and "://" not in head and "/" not in head:
        if not _TAG.match(head):
            raise InputError(f"source tag {head!r} must match {_TAG.pattern}")
        return head, tail
    return None, arg


def expand(uri: str) -> list[str]:
    """Input files named by one URI (file, folder, glob or @list), sorted; an error if none."""
    if uri.startswith("@"):
        listed = vio.read_bytes(uri[1:]).decode().split()
        return sorted({f for item in listed for f in expand(item)})
    if any(c in uri for c in "*?["):
        files = [f for f in vio.glob(uri) if f.lower().endswith(_SUFFIXES)]
    elif vio.exists(uri) and not uri.lower().endswith(_SUFFIXES):
        files = [f for f in vio.ls(uri) if f.lower().endswith(_SUFFIXES)]
    else:
        files = [uri] if vio.exists(uri) else []
    if not files:
        raise FileNotFoundError(f"no input files (suffixes {', '.join(_SUFFIXES)}) found at {uri!r}")
    return sorted(files)


def default_tag(uri: str) -> str:
    """The folder a glob/folder points into, or a single file's stem, made tag-safe."""
    path = uri.lstrip("@").split("://", 1)[-1].rstrip("/")
    if path.lower().endswith(_SUFFIXES) and not any(c in path for c in "*?["):
        name = shard_stem(path)
    else:
        name = path
        while any(c in posixpath.basename(name) for c in "*?[") or posixpath.basename(name) == "":
            name = posixpath.dirname(name)
        name = posixpath.basename(name)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip("._-") or "source"


def plan_parts(inputs: list[str]) -> list[dict]:
    """[{name, source, shard, input, format}], sorted by name; one entry per distinct input file."""
    by_source: dict[str, list[str]] = {}
    for arg in inputs:
        tag, uri = parse_input(arg)
        files = expand(uri)
        by_source.setdefault(tag or default_tag(uri), []).extend(files)
    parts = []
    for source, files in sorted(by_source.items()):
        files = sorted(set(files))
        stems = [shard_stem(f) for f in files]
        for uri, stem in zip(files, stems):
            shard = _safe(stem)
            if stems.count(stem) > 1:  # same file name in two folders: keep both, distinguishably
                shard += "-" + hashlib.sha1(uri.encode()).hexdigest()[:8]
            try:
                fmt = detect_format(uri)
            except ValueError as e:
                raise InputError(str(e)) from None
            parts.append({"name": f"part-{source}-{shard}", "source": source, "shard": shard,
                          "input": uri, "format": fmt})
    return sorted(parts, key=lambda p: p["name"])


def _safe(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "_"
