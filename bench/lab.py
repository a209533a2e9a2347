"""The lab every benchmark runs in: a moto server, an isolated AWS environment, the policy, and the
servers under test, started on demand and all stopped on exit."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import aws
from bench.nginx import Nginx
from bench.proc import rss_bytes
from bench.scenarios import Context, Server, servers
from bench.targets import NginxTarget, SentinelTarget, Target
from bench.tools import Pinning, Tools
from harness.aws_env import isolated_aws_environment
from harness.loopback import free_port
from harness.moto import MotoServer

_log = logging.getLogger("bench")


@dataclass
class Running:
    """A started server: the target, its command line and its memory when it became ready."""

    target: Target
    command: str
    rss_ready: int
    final: dict[str, Any] | None = None  # counters after a graceful shutdown
    stopped: bool = False
    paused: bool = False

    def pause(self) -> None:
        if not self.paused and not self.stopped:
            os.kill(self.target.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            os.kill(self.target.pid, signal.SIGCONT)
            self.paused = False


@dataclass
class Lab:
    tools: Tools
    pinning: Pinning
    work: Path
    context: Context
    specs: dict[str, Server]
    running: dict[str, Running] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def start(self, keys: Iterable[str]) -> None:
        """Start the Sentinel servers in `keys` side by side, then nginx (it serves their body)."""
        wanted = [key for key in keys if key not in self.running]
        started: dict[str, SentinelTarget] = {}
        for key in wanted:
            spec = self.specs[key]
            if spec.args is not None:
                prefix = self.pinning.server_prefix()
                started[key] = SentinelTarget(list(spec.args), prefix, self.work / f"{key}.log", spec.env)
        try:
            for key, target in started.items():
                target.wait_ready()
                command = " ".join(shlex.quote(part) for part in target.command)
                env = " ".join(f"{k}={v}" for k, v in self.specs[key].env.items())
                self.running[key] = Running(target, f"{env} {command}".strip(), rss_bytes(target.pid))
                _log.info("server %s ready on port %d", key, target.port)
        except BaseException:
            # `stop()` only knows the servers that became ready; the others must not outlive us.
            for key, target in started.items():
                if key not in self.running:
                    target.kill()
            raise
        if "a" in wanted:
            self._start_nginx()

    @contextmanager
    def alone(self, key: str, settle: float) -> Iterator[Target]:
        """Only server `key` runs inside the block; every other server is stopped (SIGSTOP).

        The servers share one CPU: an idle server's background work (a revocation poll through
        aiobotocore costs milliseconds of CPU, a dead store's retries more) would otherwise land
        in another scenario's latency tail. `settle` seconds after resuming let the server's
        overdue timers (a flush, a poll) fire before the measurement starts."""
        for other, running in self.running.items():
            if other != key:
                running.pause()
        running = self.running[key]
        running.resume()
        time.sleep(settle)
        yield running.target

    def pause_all(self) -> None:
        for running in self.running.values():
            running.pause()

    def _start_nginx(self) -> None:
        if self.tools.nginx is None:
            self.notes.append(
                "Scenario a skipped: nginx is not installed (`apt-get install nginx`); no ratios to (a)."
            )
            _log.warning("nginx not found: scenario a skipped (install it with `apt-get install nginx`)")
            return
        body = self._credential_body()
        nginx = Nginx(self.tools.nginx, self.work / "nginx", free_port(), body)
        prefix = self.pinning.server_prefix()
        nginx.start(prefix)
        command = " ".join(shlex.quote(part) for part in nginx.command(prefix))
        self.running["a"] = Running(NginxTarget(nginx), command, rss_bytes(nginx.pid))
        _log.info("nginx ready on port %d (%d-byte body)", nginx.port, len(body))

    def _credential_body(self) -> bytes:
        sentinels = [r.target for r in self.running.values() if isinstance(r.target, SentinelTarget)]
        if not sentinels:
            self.start(["b"])
            return self._credential_body()
        return sentinels[0].fetch()

    def stop(self) -> None:
        """Stop every server (idempotent); a server that fails to stop does not keep the others up."""
        live = {key: running for key, running in self.running.items() if not running.stopped}
        for running in live.values():
            running.resume()
            if isinstance(running.target, SentinelTarget):
                running.target.request_stop()  # all shut down side by side, each under its deadline
        for key, running in live.items():
            running.stopped = True
            try:
                running.final = running.target.stop()
            except (RuntimeError, OSError) as exc:
                _log.warning("stopping server %s failed: %s", key, exc)


@contextmanager
def open_lab(tools: Tools, pinning: Pinning, work: Path) -> Iterator[Lab]:
    """moto up, environment isolated, role and table created; every server stopped on exit."""
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        moto = MotoServer()
        moto.start()
        stack.callback(moto.stop)
        stack.enter_context(isolated_aws_environment(work, AWS_ENDPOINT_URL=moto.url))
        role_arn = aws.prepare(moto)
        policy = work / "policy.yaml"
        policy.write_text(aws.POLICY)
        context = Context(work, policy, role_arn, aws.closed_port_endpoint())
        lab = Lab(tools, pinning, work, context, servers(context))
        stack.callback(lab.stop)
        _log.info("moto on %s; role %s", moto.url, role_arn)
        yield lab
