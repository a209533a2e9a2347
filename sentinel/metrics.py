"""Counters and gauges, rendered in the Prometheus text exposition format on `/metrics`.

Deliberately tiny: incrementing a counter is a dict lookup and an integer add, cheap enough for
the hot path. No global registry: the daemon creates one `Registry` and passes it to the parts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, TypeVar

LabelValues = tuple[str, ...]
Kind = Literal["counter", "gauge"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Metric:
    __slots__ = ("_values", "help", "kind", "labels", "name")

    def __init__(self, name: str, help_text: str, kind: Kind, labels: Iterable[str]) -> None:
        self.name = name
        self.help = help_text
        self.kind = kind
        self.labels = tuple(labels)
        self._values: dict[LabelValues, float] = {}
        if not self.labels:
            self._values[()] = 0

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0)

    def samples(self) -> list[tuple[LabelValues, float]]:
        return sorted(self._values.items())

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples():
            number = int(value) if float(value).is_integer() else value
            if labels:
                pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(self.labels, labels, strict=True))
                yield f"{self.name}{{{pairs}}} {number}"
            else:
                yield f"{self.name} {number}"


M = TypeVar("M", bound=_Metric)


class Counter(_Metric):
    """A monotonically increasing count, optionally split by label values."""

    def inc(self, *labels: str, amount: float = 1) -> None:
        self._values[labels] = self._values.get(labels, 0) + amount


class Gauge(_Metric):
    """A value that goes up and down; `set_function` reads it at scrape time instead."""

    __slots__ = ("_function",)

    def __init__(self, name: str, help_text: str, labels: Iterable[str] = ()) -> None:
        super().__init__(name, help_text, "gauge", labels)
        self._function: Callable[[], float] | None = None

    def set(self, value: float, *labels: str) -> None:
        self._values[labels] = value

    def set_function(self, function: Callable[[], float]) -> None:
        self._function = function

    def samples(self) -> list[tuple[LabelValues, float]]:
        if self._function is not None:
            return [((), self._function())]
        return super().samples()


class Registry:
    """The set of metrics one server exposes."""

    def __init__(self, prefix: str = "sentinel_") -> None:
        self._prefix = prefix
        self._metrics: dict[str, _Metric] = {}

    def counter(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Counter:
        return self._register(Counter(self._prefix + name, help_text, "counter", labels))

    def gauge(self, name: str, help_text: str, labels: Iterable[str] = ()) -> Gauge:
        return self._register(Gauge(self._prefix + name, help_text, labels))

    def _register(self, metric: M) -> M:
        existing = self._metrics.get(metric.name)
        if existing is not None:
            if type(existing) is not type(metric) or existing.labels != metric.labels:
                raise ValueError(f"metric {metric.name} registered twice with different shapes")
            return existing
        self._metrics[metric.name] = metric
        return metric

    def get(self, name: str) -> _Metric | None:
        return self._metrics.get(self._prefix + name)

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
