"""Upload a vgt folder (a pipeline, an AE or an adapter folder) to a Hugging Face Hub model repo, e.g.

  vgt push --in runs/ar-sft/export --repo me/vgt-shapes
  vgt push --in s3://runs/ae2/export --repo me/vgt-ae@v1

Then every command that reads the folder takes the repo id instead: `vgt generate --model
me/vgt-shapes`, `vgt serve --model me/vgt-shapes`, `vgt train-ar --ae me/vgt-ae@v1`,
`VGTPipeline.from_pretrained("me/vgt-shapes")`. Credentials, endpoint and cache are the Hub's own
(`hf auth login` or HF_TOKEN, HF_ENDPOINT, HF_HOME).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="folder", required=True, metavar="DIR",
                        help="the folder to upload (local or s3://): a pipeline, AE or adapter folder")
    parser.add_argument("--repo", required=True, metavar="OWNER/NAME[@REVISION]",
                        help="Hub model repo (created if missing); @REVISION uploads to that branch")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--message", default=None, help="commit message (default: 'vgt push <folder name>')")


def run(args: argparse.Namespace) -> int:
    from vgt import io as vio
    from vgt.errors import UsageError, VGTError
    from vgt.hub import REPO_ID, push
    from vgt.pipeline import INDEX_FILE

    match = REPO_ID.match(args.repo)
    if not match:
        raise UsageError(f"--repo {args.repo!r}: expected OWNER/NAME or OWNER/NAME@REVISION")
    if not any(vio.exists(vio.join(args.folder, f)) for f in (INDEX_FILE, "config.json")):
        raise VGTError(f"{args.folder}: not a vgt folder (no {INDEX_FILE} or config.json)")
    url = push(args.folder, match["repo"], match["revision"], private=args.private or None, message=args.message)
    print(url)
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
