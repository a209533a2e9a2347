"""Scenario a: nginx returning the credential JSON as a static 200 — the ceiling of this box.

One process (`master_process off`) so its CPU time and memory are read from a single pid, the
same way as the Sentinel target's; keep-alive without a request limit, no access log.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from bench.proc import rss_bytes
from harness.process import stop_process, wait_serving

_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server_tokens off;
    # `$` cannot be escaped in an nginx string; a variable that expands to it can stand in.
    geo $dollar {{ default "$"; }}
    server {{
        listen 127.0.0.1:{port};
        location = / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""


def config_text(directory: Path, port: int, body: bytes) -> str:
    text = body.decode().replace("\\", "\\\\").replace("'", "\\'").replace("$", "${dollar}")
    return _CONFIG.format(dir=directory, port=port, body=text)


class Nginx:
    """A private nginx on a loopback port, serving `body` at `/`."""

    def __init__(self, executable: str, directory: Path, port: int, body: bytes) -> None:
        self.directory = directory
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "nginx.conf"
        self.config.write_text(config_text(directory, port, body))
        self._executable = executable
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("nginx is not running")
        return self._proc.pid

    def command(self, prefix: list[str]) -> list[str]:
        return [*prefix, self._executable, "-p", str(self.directory), "-e", "stderr", "-c", str(self.config)]

    def start(self, prefix: list[str], timeout: float = 10.0) -> None:
        log = (self.directory / "stderr.log").open("wb")
        self._proc = subprocess.Popen(self.command(prefix), stdout=log, stderr=log)
        process = self._proc

        def serving() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return rss_bytes(process.pid) > 0
            except OSError:
                return False

        def exit_detail() -> str:
            return (self.directory / "stderr.log").read_text().strip()

        try:
            wait_serving(process, serving, f"nginx on port {self.port}", timeout, exit_detail)
        except RuntimeError:
            self._proc = None
            raise

    def stop(self) -> None:
        if self._proc is None:
            return
        stop_process(self._proc)
        self._proc = None
