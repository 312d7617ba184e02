"""vgt folders on the Hugging Face Hub: `owner/name[@revision]` wherever a pipeline or AE folder is read.

`resolve` turns a repo id into a local snapshot with `huggingface_hub.snapshot_download`, in the
process that calls it (the driver: Ray workers and Serve replicas then get a local path), so the
Hub's own settings apply: the cache under HF_HOME (or HF_HUB_CACHE), HF_ENDPOINT, HF_TOKEN, and
HF_HUB_OFFLINE=1, which reads the cache only. Local paths and s3:// URIs pass through unchanged; a
path that exists locally is always a path. `push` uploads a folder (`vgt push`).
"""
from __future__ import annotations

import os
import re

from vgt import io as vio
from vgt.errors import VGTError

# owner/name, optionally @revision (a branch, tag or commit); no leading "/", "." or "~" (paths)
REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


class HubError(VGTError):
    """A repo id that cannot be resolved (missing, offline without a cached copy, refused)."""


def parse_repo_id(ref: str) -> tuple[str, str | None] | None:
    """(repo_id, revision) when `ref` names a Hub repo rather than a local folder or URI, else None."""
    if vio.is_s3(ref) or "://" in ref or os.path.exists(ref):
        return None
    match = REPO_ID.match(ref)
    return (match["repo"], match["revision"]) if match else None


def resolve(ref: str) -> str:
    """A local path or URI for `ref`: a local path made absolute (Ray actors run in another directory),
    a URI unchanged, or the local snapshot of a Hub repo id."""
    parsed = parse_repo_id(ref)
    if parsed is None:
        return vio.absolute(ref)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo_id, revision = parsed
    try:
        # HF_ENDPOINT read now (huggingface_hub reads it once, at import)
        return snapshot_download(repo_id, revision=revision, endpoint=os.environ.get("HF_ENDPOINT"))
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise HubError(f"{ref}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 "
                           "forbids downloading it (unset HF_HUB_OFFLINE, or fill the cache first)") from None
        raise HubError(f"{ref}: cannot reach the Hugging Face Hub and no cached copy exists "
                       f"({constants.HF_HUB_CACHE})") from None
    except RevisionNotFoundError:
        raise HubError(f"{ref}: the Hub repo {repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise HubError(f"{ref}: no such Hub repo (or no access to it: log in with `hf auth login` or set "
                       "HF_TOKEN)") from None


def push(folder: str, repo_id: str, revision: str | None = None, private: bool | None = None,
         message: str | None = None) -> str:
    """Upload `folder` (local or s3://) to the Hub model repo `repo_id` (created if missing); its commit URL."""
    import tempfile

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT"))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="vgt-push-") as tmp:
            local = vio.local_copy(folder, tmp)
            info = api.upload_folder(folder_path=local, repo_id=repo_id, revision=revision,
                                     commit_message=message or f"vgt push {os.path.basename(folder.rstrip('/'))}")
    except OfflineModeIsEnabled:
        raise HubError(f"{repo_id}: HF_HUB_OFFLINE=1 forbids uploading (unset it to push)") from None
    except HfHubHTTPError as e:
        raise HubError(f"{repo_id}: the Hub refused the upload ({str(e).splitlines()[0]})") from None
    return info.commit_url
