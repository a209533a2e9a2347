"""The front of a server with several profiles (issue 14): `/healthz` and `/metrics` for all of them.

Each profile's credential path is answered by its own `Pipeline` (the listener routes to it
directly, so the hot path is the single-profile one). What the server answers once for all
profiles lives here: health with a section per profile, and metrics with a `profile` label on
every figure that belongs to one profile. `GET /` goes to the default profile.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from sentinel.metrics import Registry, render_labelled
from sentinel.pipeline import Pipeline
from sentinel.server.service import JSON, PROMETHEUS_TEXT, Caller, Reply


class ProfileSet:
    """A `CredentialService` over several profiles' pipelines, the default one first."""

    __slots__ = ("_default", "_pipelines", "_registries", "_shared")

    def __init__(
        self, pipelines: Sequence[Pipeline], *, shared: Registry, registries: Sequence[Registry]
    ) -> None:
        """`shared`: the server's own figures (requests, connections, decision log); `registries`:
        each pipeline's (its decisions, credential cache and session tracker), in the same order."""
        if not pipelines or len(pipelines) != len(registries):
            raise ValueError("one registry per pipeline, and at least one pipeline")
        self._pipelines = tuple(pipelines)
        self._default = pipelines[0]
        self._shared = shared
        self._registries = {p.identity.profile: r for p, r in zip(pipelines, registries, strict=True)}

    def issue_nowait(self, caller: Caller | None = None) -> Reply | None:
        return self._default.issue_nowait(caller)

    async def issue(self, caller: Caller | None = None) -> Reply:
        return await self._default.issue(caller)

    def health(self) -> Reply:
        """The default profile's health at the top level, as a single-profile server answers it
        (so existing probes keep working), and every profile's under `profiles`."""
        body = self._default.health_body()
        body["profiles"] = {
            pipeline.identity.profile: {
                "default": pipeline is self._default,
                **{
                    key: value
                    for key, value in pipeline.health_body().items()
                    if key not in ("status", "policy")
                },
            }
            for pipeline in self._pipelines
        }
        return Reply(200, orjson.dumps(body), JSON)

    def metrics(self) -> Reply:
        return Reply(
            200, render_labelled(self._shared, "profile", self._registries).encode(), PROMETHEUS_TEXT
        )
