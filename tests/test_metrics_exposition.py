"""`/metrics` of a real `sentinel serve`, read by Prometheus's reference parser (issue 12)."""

from __future__ import annotations

import http.client
import math
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.waiting import DEADLINE
from sentinel.metrics import Registry
from tests.support.serve import serving

# A metric name as Prometheus's data model allows it (the parser is more lenient).
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _scrape(port: int, token: str) -> tuple[str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        connection.request("GET", "/metrics", headers={"Authorization": token})
        response = connection.getresponse()
        body = response.read().decode()
        assert response.status == 200, body
        return response.getheader("Content-Type", ""), body
    finally:
        connection.close()


def test_every_family_parses_with_a_name_a_type_a_help_and_its_samples(
    env: dict[str, str], tmp_path: Path, policy: Path
) -> None:
    """1. serve with every part that registers metrics: tracking on SQLite and a decision log.
    2. One allowed request and one with a wrong token, so labelled series exist too.
    3. The scrape, fed to prometheus_client's text parser: every family has a valid name, a
       counter or gauge type and a help text, every sample line of the body is one parsed sample
       with a finite value, counters end in _total, and no family appears twice."""
    with serving(
        env,
        tmp_path / "run",
        "--policy-file",
        str(policy),
        "--session-db",
        str(tmp_path / "sessions.db"),
        "--decision-log",
        str(tmp_path / "decisions.jsonl"),
    ) as served:
        assert served.credentials()[0] == 200
        assert served.get("/", token="not-the-token")[0] == 401
        content_type, body = _scrape(served.port, served.token)
        assert served.process.stop() == 0
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert body.endswith("\n")
    families = list(text_string_to_metric_families(body))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), names
    sample_lines = [line for line in body.splitlines() if line and not line.startswith("#")]
    assert sum(len(family.samples) for family in families) == len(sample_lines)
    for family in families:
        assert _NAME.fullmatch(family.name), family.name
        assert family.name.startswith("sentinel_"), family.name
        assert family.type in {"counter", "gauge"}, (family.name, family.type)
        assert family.documentation, f"{family.name} has no help text"
        assert family.samples, f"{family.name} has no samples"
        for sample in family.samples:
            # The parser strips _total from a counter family's name, never from its samples.
            # A gauge named _total would be a count that rate() cannot be used on.
            expected = f"{family.name}_total" if family.type == "counter" else family.name
            assert sample.name == expected, (family.name, family.type, sample.name)
            assert family.type == "counter" or not family.name.endswith("_total"), family.name
            assert math.isfinite(sample.value), sample
    # The families each part registers are all there (a sample of each, not an exhaustive list).
    for name in (
        "sentinel_requests",
        "sentinel_session_touch_queued",
        "sentinel_policy_decisions",
        "sentinel_credential_cache_hits",
        "sentinel_decision_log_written",
        "sentinel_decision_log_pending",
        "sentinel_connections_open",
    ):
        assert name in names, (name, names)
    decisions = {f.name: f for f in families}["sentinel_policy_decisions"]
    assert [(s.labels, s.value) for s in decisions.samples] == [({"effect": "allow"}, 1.0)]


def test_awkward_text_and_values_survive_the_reference_parser() -> None:
    """A registry with everything the format has to escape or spell specially: backslashes,
    newlines and quotes in help texts and label values, NaN and infinities, a float, and a
    counter read from a function. Parsed back, every value and text is what went in."""
    registry = Registry()
    help_text = 'Odd help: a \\ backslash, a "quote"\nand a second line.'
    counter = registry.counter("odd_total", help_text, ("path",))
    counter.inc('C:\\dir\n"x"', amount=2)
    counter.inc("plain")
    for name, value in (("nan", math.nan), ("up", math.inf), ("down", -math.inf), ("half", 0.5)):
        registry.gauge(f"{name}_value", "A special value.").set(value)
    counted = iter(range(5, 100))
    registry.counter("read_total", "A count kept elsewhere.").set_function(lambda: next(counted))
    families = {family.name: family for family in text_string_to_metric_families(registry.render())}
    odd = families["sentinel_odd"]
    assert (odd.type, odd.documentation) == ("counter", help_text)
    assert {s.labels["path"]: s.value for s in odd.samples} == {'C:\\dir\n"x"': 2, "plain": 1}
    assert math.isnan(families["sentinel_nan_value"].samples[0].value)
    assert families["sentinel_up_value"].samples[0].value == math.inf
    assert families["sentinel_down_value"].samples[0].value == -math.inf
    assert families["sentinel_half_value"].samples[0].value == 0.5
    assert families["sentinel_read"].type == "counter"
    assert families["sentinel_read"].samples[0].value == 5
    again = {family.name: family for family in text_string_to_metric_families(registry.render())}
    assert again["sentinel_read"].samples[0].value == 6  # read afresh at each scrape


def test_invalid_names_are_refused_when_registered() -> None:
    registry = Registry()
    with pytest.raises(ValueError, match="invalid metric name"):
        registry.counter("bad-name_total", "A dash is not allowed.")
    with pytest.raises(ValueError, match="invalid label name"):
        registry.counter("ok_total", "A reserved label.", ("__name",))
    with pytest.raises(ValueError, match="has labels"):
        registry.gauge("labelled", "One value per label set.", ("a",)).set_function(lambda: 1.0)
