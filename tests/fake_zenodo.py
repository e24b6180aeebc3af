"""A fake Zenodo server on 127.0.0.1 for the download tests (no internet needed)."""

from __future__ import annotations

import hashlib
import http.server
import json
import re


class FakeZenodo(http.server.ThreadingHTTPServer):
    """Serves /api/records/1 and /files/<key>; records every request and its Range header."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = dict(files)
        self.md5 = {k: hashlib.md5(v).hexdigest() for k, v in files.items()}
        self.legacy = False  # serve the pre-2023 record layout
        self.cut_once: dict[str, int] = {}  # key -> bytes after which the first reply drops
        self.ignore_range = False
        self.give_up_after: int | None = None  # file requests answered before 404s
        self.requests: list[tuple[str, str | None]] = []

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/records/1"

    def record(self) -> dict:
        base = f"http://127.0.0.1:{self.server_address[1]}/files"
        if self.legacy:
            files = [
                {
                    "filename": k,
                    "filesize": len(v),
                    "checksum": self.md5[k],
                    "links": {"download": f"{base}/{k}"},
                }
                for k, v in self.files.items()
            ]
        else:
            files = [
                {
                    "key": k,
                    "size": len(v),
                    "checksum": f"md5:{self.md5[k]}",
                    "links": {"self": f"{base}/{k}"},
                }
                for k, v in self.files.items()
            ]
        return {"id": 1, "files": files}

    def file_gets(self) -> list[tuple[str, str | None]]:
        return [r for r in self.requests if r[0].startswith("/files/")]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeZenodo

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path == "/api/records/1":
            return self._send(200, json.dumps(srv.record()).encode(), {})
        key = self.path.removeprefix("/files/")
        if key not in srv.files or len(srv.file_gets()) > (srv.give_up_after or float("inf")):
            return self._send(404, b"not found", {})
        data = srv.files[key]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not srv.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            status = 206
        else:
            headers, status = {}, 200
        body = data[start:]
        cut = srv.cut_once.pop(key, None)
        self._send(status, body, headers, cut=cut)

    def _send(self, status: int, body: bytes, headers: dict, cut: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        # Announce the full length but close early: what a dropped connection looks like.
        self.wfile.write(body if cut is None else body[:cut])
        self.close_connection = True
