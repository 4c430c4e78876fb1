"""A fake Hugging Face Hub behind huggingface_hub's own HTTP client (no network): it keeps the
repos in memory, answers repo creation, pre-upload and commit calls, and serves the committed
files back for downloads. Installed with ``huggingface_hub.set_client_factory``."""

from __future__ import annotations

import base64
import hashlib
import importlib
import json

import huggingface_hub
from huggingface_hub.utils import get_session


def _http_module():
    # huggingface_hub's client library (httpx or a fork of it), whichever this version uses
    return importlib.import_module(type(get_session()).__module__.split(".")[0])


class FakeHub:
    def __init__(self) -> None:
        self.http = _http_module()
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> revision -> path -> bytes
        self.requests: list[tuple[str, str]] = []
        self.offline = False

    def install(self) -> FakeHub:
        huggingface_hub.set_client_factory(lambda: self.http.Client(transport=self.http.MockTransport(self.handle)))
        return self

    @staticmethod
    def uninstall() -> None:
        huggingface_hub.set_client_factory(huggingface_hub.utils._http.default_client_factory)

    def _json(self, data, status=200):
        return self.http.Response(status, json=data)

    def handle(self, request):
        if self.offline:
            raise AssertionError(f"network used while offline: {request.method} {request.url}")
        path = request.url.path
        self.requests.append((request.method, path))
        if path == "/api/repos/create":
            body = json.loads(request.content)
            repo = f"{body.get('organization') or 'user'}/{body['name']}" if "/" not in body["name"] else body["name"]
            self.repos.setdefault(repo, {})
            return self._json({"url": f"https://huggingface.co/{repo}", "name": repo})
        if path == "/api/validate-yaml":  # model card metadata check
            return self._json({"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in files]})
        if "/commit/" in path:
            repo = path.removeprefix("/api/models/").split("/commit/")[0]
            files = {}
            for line in request.content.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            revision = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
            self.repos.setdefault(repo, {})[revision] = files
            return self._json({"commitOid": revision, "commitUrl": f"https://huggingface.co/{repo}/commit/{revision}"})
        if path.startswith("/api/models/") and "/tree/" in path:
            repo, rev = path.removeprefix("/api/models/").split("/tree/")
            files = self.repos.get(repo, {}).get(rev)
            if files is None:
                return self._json({"error": "Revision not found"}, 404)
            return self._json([{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                               for p, b in files.items()])
        if "/resolve/" in path:
            repo, rest = path.lstrip("/").split("/resolve/")
            rev, name = rest.split("/", 1)
            body = self.repos.get(repo, {}).get(rev, {}).get(name)
            if body is None:
                return self._json({"error": "Entry not found"}, 404)
            headers = {"X-Repo-Commit": rev, "ETag": f'"{hashlib.sha1(body).hexdigest()}"',
                       "Content-Length": str(len(body))}
            return self.http.Response(200, headers=headers, content=b"" if request.method == "HEAD" else body)
        return self._json({"error": "not found"}, 404)
