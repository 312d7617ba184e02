"""A loopback stand-in for the Hugging Face Hub's file endpoints (as moto is for S3), enough for the
real `huggingface_hub` client's `snapshot_download` and `upload_folder`: repo info, the recursive
tree, file resolve (HEAD + GET), repo and branch creation, preupload (every file "regular") and
NDJSON commits. Repos live in memory: {repo_id: {branch: (commit sha, {path: bytes})}}."""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubState:
    def __init__(self):
        self.repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def commit(self, repo: str, branch: str, files: dict[str, bytes]) -> str:
        with self.lock:
            branches = self.repos.setdefault(repo, {})
            _, old = branches.get(branch) or branches.get("main") or ("", {})
            tree = {**old, **files}
            sha = hashlib.sha1(json.dumps({p: git_oid(d) for p, d in sorted(tree.items())}).encode()
                               + branch.encode()).hexdigest()
            branches[branch] = (sha, tree)
            return sha

    def lookup(self, repo: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        branches = self.repos.get(repo, {})
        if revision in branches:
            return branches[revision]
        return next((b for b in branches.values() if b[0] == revision), None)


class Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _not_found(self, head: bool = False):
        self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound",
                                                                "Content-Type": "application/json"}, head)

    def _body(self) -> bytes:
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

    def do_HEAD(self):
        self._resolve(head=True)

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        self.state.requests.append(f"GET {path}")
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
            found = self.state.lookup(m[1], m[2])
            if not found:
                return self._not_found()
            sha, files = found
            return self._json(200, {"id": m[1], "sha": sha, "siblings": [{"rfilename": p} for p in sorted(files)]})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
            found = self.state.lookup(m[1], m[2])
            if not found:
                return self._not_found()
            return self._json(200, [{"type": "file", "path": p, "size": len(d), "oid": git_oid(d)}
                                    for p, d in sorted(found[1].items())])
        return self._resolve(head=False)

    def _resolve(self, head: bool):
        path = unquote(urlsplit(self.path).path)
        if head:
            self.state.requests.append(f"HEAD {path}")
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        found = m and self.state.lookup(m[1], m[2])
        if not found or m[3] not in found[1]:
            return self._not_found(head)
        data = found[1][m[3]]
        self._send(200, data, {"X-Repo-Commit": found[0], "ETag": f'"{git_oid(data)}"',
                               "Content-Type": "application/octet-stream"}, head)

    def do_POST(self):
        path = unquote(urlsplit(self.path).path)
        self.state.requests.append(f"POST {path}")
        body = self._body()
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            if repo not in self.state.repos:
                self.state.commit(repo, "main", {})
            return self._json(200, {"url": f"http://{self.headers['Host']}/{repo}"})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/(.+)", path):
            main = self.state.lookup(m[1], "main")
            self.state.repos[m[1]][m[2]] = main
            return self._json(200, {})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path):
            files = json.loads(body)["files"]
            return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                              for f in files]})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path):
            files = {}
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            sha = self.state.commit(m[1], m[2], files)
            return self._json(200, {"commitUrl": f"http://{self.headers['Host']}/{m[1]}/commit/{sha}",
                                    "commitOid": sha})
        self._send(404, b"{}")


def start() -> tuple[str, HubState, ThreadingHTTPServer]:
    state = HubState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", state, server
