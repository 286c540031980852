"""Shared helpers for the prepare-stage tests: params, tiny raw files, and a loopback HTTP server."""
from __future__ import annotations

import copy
import http.server
import shutil
import socket
import threading
from pathlib import Path

from cpsl.config.schema import load_params, validate_params
from cpsl.data.demo import write_demo
from cpsl.data.sources import DEMO_FILE_NAMES, ROLES, dataset_spec

REPO = Path(__file__).resolve().parents[1]

TINY_DEMO = {"seed": 3, "videos": 6, "min_segments": 1, "max_segments": 2}


def make_params(dataset: str = "demo", mirror: str | None = None, **demo) -> dict:
    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    params["dataset"] = dataset
    params["data"]["mirror"] = mirror
    params["execution"]["download"] = {"retries": 2, "backoff_s": 0.01, "timeout_s": 5.0}
    params["demo"].update(TINY_DEMO)
    params["demo"].update(demo)
    return validate_params(params, "test params")


def write_fake_mirror(folder: Path, dataset: str = "mosi") -> dict:
    """A mirror folder holding tiny valid .csd files under ``dataset``'s SDK names; returns role -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / ".gen"
    write_demo(scratch, TINY_DEMO)
    spec = dataset_spec(dataset)
    out = {}
    for role in ROLES:
        out[role] = folder / spec.file(role).name
        shutil.move(scratch / DEMO_FILE_NAMES[role], out[role])
    shutil.rmtree(scratch)
    return out


def force_copy(monkeypatch) -> None:
    """Make cpsl.data.mirror.place_file find neither reflinks nor hard links (a mirror on another file system)."""
    import errno

    import cpsl.data.mirror as mirror_mod

    def cross_device(src, dest):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(mirror_mod, "_reflink", cross_device)
    monkeypatch.setattr(mirror_mod, "_hard_link", cross_device)


def free_port() -> int:
    """A loopback port with nothing listening on it (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """Serves ``files`` (url path -> bytes) on 127.0.0.1 only, with scripted misbehaviour.

    ``fail_first[path] = n``: the first n requests for path answer HTTP 503.
    ``truncate_first[path] = n``: the first n requests send half the body with the full Content-Length.
    ``status[path] = code``: always answer ``code``. ``hits[path]`` counts requests.
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.fail_first: dict[str, int] = {}
        self.truncate_first: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                path = self.path
                server.hits[path] = server.hits.get(path, 0) + 1
                n = server.hits[path]
                if path in server.status:
                    self._empty(server.status[path])
                elif path not in server.files:
                    self._empty(404)
                elif n <= server.fail_first.get(path, 0):
                    self._empty(503)
                else:
                    body = server.files[path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if n <= server.truncate_first.get(path, 0):
                        self.wfile.write(body[: len(body) // 2])
                    else:
                        self.wfile.write(body)
                    self.close_connection = True

            def _empty(self, code):
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
