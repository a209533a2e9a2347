"""Counters and gauges, rendered in the Prometheus text exposition format on `/metrics`.

Deliberately tiny: incrementing a counter is a dict lookup and an integer add, cheap enough for
the hot path. No global registry: the daemon creates one `Registry` and passes it to the parts.
The output is checked by Prometheus's own parser (tests/test_metrics_exposition.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, TypeVar

LabelValues = tuple[str, ...]
Kind = Literal["counter", "gauge"]

# The data model's names (https://prometheus.io/docs/concepts/data_model/); checked once, at
# registration, so a typo fails at startup instead of making every scrape unparseable.
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    # HELP escapes backslash and newline only; a quote stays as it is.
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isfinite(value):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    # The format's spellings; Python's str() would say nan and inf.
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


class _Metric:
    __slots__ = ("_function", "_values", "help", "kind", "labels", "name")

    def __init__(self, name: str, help_text: str, kind: Kind, labels: Iterable[str]) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        self.name = name
        self.help = help_text
        self.kind = kind
        self.labels = tuple(labels)
        bad = [label for label in self.labels if not _LABEL_NAME.fullmatch(label) or label.startswith("__")]
        if bad:
            raise ValueError(f"invalid label name(s) {bad} on metric {name}")
        self._values: dict[LabelValues, float] = {}
        self._function: Callable[[], float] | None = None
        if not self.labels:
            self._values[()] = 0

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the (unlabelled) value from `function` at scrape time instead.

        For a counter, `function` must never go down (a count kept elsewhere, e.g. a statistics()
        field); that keeps the hot path free of metric updates."""
        if self.labels:
            raise ValueError(f"metric {self.name} has labels; a function gives one unlabelled value")
        self._function = function

    def value(self, *labels: str) -> float:
        if self._function is not None and not labels:
            return self._function()
        return self._values.get(labels, 0)

    def samples(self) -> list[tuple[LabelValues, float]]:
        if self._function is not None:
            return [((), self._function())]
        return sorted(self._values.items())

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples():
            number = _number(value)
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

    __slots__ = ()

    def __init__(self, name: str, help_text: str, labels: Iterable[str] = ()) -> None:
        super().__init__(name, help_text, "gauge", labels)

    def set(self, value: float, *labels: str) -> None:
        self._values[labels] = value


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


def render_labelled(shared: Registry, label: str, parts: Mapping[str, Registry]) -> str:
    """`shared` and every registry of `parts` as one exposition, each metric family once: the
    samples of `parts[value]` carry `label="value"` first (several profiles, issue 14)."""
    if not _LABEL_NAME.fullmatch(label):
        raise ValueError(f"invalid label name {label!r}")
    families: dict[str, list[tuple[str, _Metric]]] = {}
    for value, registry in (("", shared), *parts.items()):
        for metric in registry._metrics.values():
            families.setdefault(metric.name, []).append((value, metric))
    lines: list[str] = []
    for name, members in families.items():
        first = members[0][1]
        lines.append(f"# HELP {name} {_escape_help(first.help)}")
        lines.append(f"# TYPE {name} {first.kind}")
        for value, metric in members:
            for labels, number in metric.samples():
                pairs = [f'{k}="{_escape(v)}"' for k, v in zip(metric.labels, labels, strict=True)]
                if value:
                    pairs.insert(0, f'{label}="{_escape(value)}"')
                lines.append(
                    f"{name}{{{','.join(pairs)}}} {_number(number)}" if pairs else f"{name} {_number(number)}"
                )
    return "\n".join(lines) + "\n"
