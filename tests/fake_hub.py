"""A local fake of the Hugging Face Hub's HTTP API, for testing `tunesmith push` without a network.

A real HTTP server (ThreadingHTTPServer on 127.0.0.1, a free port, in a thread) that the real
`huggingface_hub` client talks to. It implements only what `HfApi.create_repo` and `HfApi.upload_folder`
request (read from huggingface_hub 2.4's hf_api.py and _commit_api.py):
  POST /api/repos/create                              -> {"url": ...}; 409 when the repo exists
  POST /api/models/{user}/{name}/preupload/{revision} -> every file "regular", so no LFS/Xet upload
  POST /api/models/{user}/{name}/commit/{revision}    -> NDJSON: a header line, then base64 file lines
  POST /api/validate-yaml                             -> the README.md's front matter must be YAML mapping
  GET  /api/whoami-v2                                 -> 401 without a token (push's reachability check)
Every request is logged (method, path, Authorization header) so a test can assert what was sent, and
any request the fake does not know answers 404 and is logged too: a new client call shows up there.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

_PREUPLOAD = re.compile(r"^/api/models/([^/]+/[^/]+)/preupload/([^/?]+)")
_COMMIT = re.compile(r"^/api/models/([^/]+/[^/]+)/commit/([^/?]+)")


@dataclass
class FakeRepo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.validated_cards: list[str] = []
        self.requests: list[dict[str, Any]] = []  # {"method", "path", "authorization"}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def unknown_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["status"] == 404]

    # -- the endpoints ------------------------------------------------------------------------------

    def _create(self, body: bytes) -> tuple[int, Any]:
        payload = json.loads(body)
        repo_id = f"{payload['organization']}/{payload['name']}"
        with self._lock:
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"}
            # The client sends "visibility" ("private"/"public"); older clients sent "private": bool.
            private = payload.get("visibility") == "private" or payload.get("private") is True
            self.repos[repo_id] = FakeRepo(private=private)
        return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}

    def _validate_yaml(self, body: bytes) -> tuple[int, Any]:
        # upload_folder sends README.md here before committing; the hub answers 400 with "errors".
        content = json.loads(body)["content"]
        self.validated_cards.append(content)
        parts = content.split("---\n")
        try:
            meta = yaml.safe_load(parts[1]) if content.startswith("---\n") and len(parts) > 2 else None
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": str(exc)}]}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "README.md has no YAML front matter"}]}
        return 200, {"errors": [], "warnings": []}

    def _preupload(self, repo_id: str, body: bytes) -> tuple[int, Any]:
        if repo_id not in self.repos:
            return 404, {"error": "Repository not found"}
        files = json.loads(body)["files"]
        return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}

    def _commit(self, repo_id: str, body: bytes) -> tuple[int, Any]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        for line in lines:
            if line["key"] == "file":
                value = line["value"]
                assert value["encoding"] == "base64", value  # regular files only: the fake never asks for LFS
                repo.files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] != "header":
                return 400, {"error": f"fake hub does not support {line['key']!r} operations"}
        oid = f"{len(repo.commits) + 1:040x}"
        repo.commits.append({"summary": header["summary"], "oid": oid})
        return 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def _route(self, method: str, path: str, body: bytes, authorized: bool) -> tuple[int, Any]:
        if method == "GET" and path == "/api/whoami-v2":
            return (200, {"name": "tester", "type": "user"}) if authorized else (401, {"error": "Invalid credentials"})
        if method != "POST":
            return 404, {"error": "not found"}
        if not authorized:  # the real hub refuses anonymous writes
            return 401, {"error": "Invalid credentials in Authorization header"}
        if path == "/api/validate-yaml":
            return self._validate_yaml(body)
        if path == "/api/repos/create":
            return self._create(body)
        if match := _PREUPLOAD.match(path):
            return self._preupload(match.group(1), body)
        if match := _COMMIT.match(path):
            return self._commit(match.group(1), body)
        return 404, {"error": "not found"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                authorization = self.headers.get("Authorization")
                path = self.path.split("?", 1)[0]
                status, data = hub._route(method, path, body, bool(authorization))
                with hub._lock:
                    hub.requests.append(
                        {"method": method, "path": self.path, "authorization": authorization, "status": status}
                    )
                encoded = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                self.end_headers()
                self.wfile.write(encoded)

            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve("HEAD")

            def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads hub.requests
                pass

        return Handler
