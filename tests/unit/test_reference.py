"""docs/reference.md is what the code generates, and the data it is generated from tells the truth.

The page is written by `make reference` (codetr_serve/tools/reference.py). The facts it reads that are data
rather than behaviour (where each wire format takes the options, the settings' allowed ranges, what each
metric means) are held to the behaviour here.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest

from codetr_serve.runtime import metrics, protocol, settings
from codetr_serve.runtime.codec import RequestLimits
from codetr_serve.runtime.settings import ALLOWED, ServingSettings, SettingsError, build_settings, default
from codetr_serve.tools import reference, reference_metrics

IMAGE_B64 = base64.b64encode(b"\xff\xd8 not decoded while parsing").decode()


def test_checked_in_reference_matches_the_code():
    generated = reference.render()
    checked_in = reference.OUTPUT.read_text(encoding="utf-8")
    assert checked_in == generated, "docs/reference.md is out of date with the code: run `make reference`"


@pytest.mark.parametrize("wire", protocol.PROTOCOLS, ids=lambda p: p.name)
def test_each_protocol_claims_its_own_example(wire):
    assert protocol.protocol_for(json.loads(wire.example)) is wire


# ---- where each wire format takes the options (WireProtocol.option_sources) -------------------------------

def _request(wire: str, values: dict[str, int]) -> tuple[dict[str, Any], dict[str, str]]:
    """A request in format `wire` carrying max_detections in each source of `values` (source -> value)."""
    headers = {"X-Max-Detections": str(values["header"])} if "header" in values else {}
    option = {"max_detections": values["json_field"]} if "json_field" in values else {}
    if wire == "predictions":
        body: dict[str, Any] = {"image": IMAGE_B64, **option}
    elif wire == "kserve-v1":
        instance = {"b64": IMAGE_B64}
        if "instance_field" in values:
            instance["max_detections"] = values["instance_field"]
        body = {"instances": [instance], **option}
    else:
        tensor: dict[str, Any] = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [IMAGE_B64]}
        if "input_parameters" in values:
            tensor["parameters"] = {"max_detections": values["input_parameters"]}
        body = {"inputs": [tensor], **option}
        if "request_parameters" in values:
            body["parameters"] = {"max_detections": values["request_parameters"]}
    request: dict[str, Any] = {"body": body}
    if "form_field" in values:
        request["max_detections"] = bytearray(str(values["form_field"]), "ascii")
    return request, headers


CANDIDATES = {
    "predictions": ("header", "form_field", "json_field"),
    "kserve-v1": ("header", "form_field", "json_field", "instance_field"),
    "kserve-v2": ("header", "form_field", "json_field", "request_parameters", "input_parameters"),
}


def _max_detections(wire: protocol.WireProtocol, values: dict[str, int]) -> int | None:
    request, headers = _request(wire.name, values)
    envelope = protocol.parse_envelope(request, RequestLimits(), headers)
    assert envelope.protocol is wire
    (item,) = envelope.items
    assert not isinstance(item, Exception), item
    return item.options.max_detections


@pytest.mark.parametrize("wire", protocol.PROTOCOLS, ids=lambda p: p.name)
def test_options_come_from_exactly_the_declared_sources(wire):
    assert set(wire.option_sources) <= set(CANDIDATES[wire.name]), "teach _request the new source"
    for source in CANDIDATES[wire.name]:
        got = _max_detections(wire, {source: 7})
        assert got == (7 if source in wire.option_sources else None), source


@pytest.mark.parametrize("wire", protocol.PROTOCOLS, ids=lambda p: p.name)
def test_a_later_option_source_wins(wire):
    sources = wire.option_sources
    for low in range(len(sources)):
        for high in range(low + 1, len(sources)):
            assert _max_detections(wire, {sources[low]: 5, sources[high]: 9}) == 9, (sources[low],
                                                                                      sources[high])


# ---- handler settings: ALLOWED says what _validate enforces ----------------------------------------------

TYPES = {f.name: str(f.type) for f in dataclasses.fields(ServingSettings)}


def _valid(name: str, value: Any) -> bool:
    try:
        build_settings({name: value}, model_dir=".", device="cuda:0")
    except SettingsError:
        return False
    return True


def _edges() -> list[tuple[str, Any, Any]]:
    """(setting, a value at a bound, the value one step beyond it)."""
    cases = []
    for name, rule in ALLOWED.items():
        step = 1 if TYPES[name] == "int" else 1e-6
        for bound, direction in ((rule.low, -1), (rule.high, +1)):
            if bound is not None:
                edge = default(bound) if isinstance(bound, str) else bound
                cases.append((name, edge, edge + direction * step))
    return cases


def test_allowed_names_real_settings():
    assert set(ALLOWED) <= set(TYPES)


@pytest.mark.parametrize(("name", "edge", "beyond"), _edges())
def test_each_bound_is_where_validation_draws_it(name, edge, beyond):
    assert _valid(name, edge)
    assert not _valid(name, beyond)


@pytest.mark.parametrize("name", [name for name, rule in ALLOWED.items() if rule.choices])
def test_each_choice_list_is_complete(name):
    assert all(_valid(name, choice) for choice in ALLOWED[name].choices)
    assert not _valid(name, "not-a-choice")


def test_a_numeric_setting_without_allowed_range_takes_any_number():
    unbounded = [name for name, kind in TYPES.items() if kind in ("int", "float") and name not in ALLOWED]
    assert all(_valid(name, -1) and _valid(name, 10**9) for name in unbounded), (
        "give these settings an entry in settings.ALLOWED: " + str(unbounded))


# ---- metrics --------------------------------------------------------------------------------------------

def test_every_metric_family_says_what_it_measures():
    families = {histogram.name for histogram in metrics.HISTOGRAMS} | set(metrics.SCALARS)
    assert set(metrics.MEANING) == families


# ---- the generator says what to do when the code outgrows the page ----------------------------------------

def test_a_setting_without_a_comment_is_refused_by_name(tmp_path, monkeypatch):
    defaults = tmp_path / "defaults.yaml"
    text = settings.DEFAULTS_FILE.read_text(encoding="utf-8")
    defaults.write_text(text + "new_knob: 3\n", encoding="utf-8")
    monkeypatch.setattr(settings, "DEFAULTS_FILE", defaults)
    with pytest.raises(SystemExit, match="new_knob"):
        reference.settings_section()


def test_an_undescribed_torchserve_metric_is_refused_by_name(monkeypatch):
    monkeypatch.delitem(reference_metrics.TORCHSERVE_MEANING, "QueueTime")
    with pytest.raises(SystemExit, match="QueueTime"):
        reference.render()
