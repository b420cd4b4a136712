"""Write docs/reference.md from the code: routes, wire formats, options, errors, settings, metrics.

    python -m codetr_serve.tools.reference          # or: make reference

Every fact on that page is read from the object that defines it (the protocol classes, the codec's header
names, the error classes, defaults.yaml and the settings' ``ALLOWED`` table, the metric declarations and
config/metrics.yaml), so the page cannot say what the code does not do. tests/unit/test_reference.py fails
when the checked-in page differs from what this writes: after changing any of them, run ``make reference``.
The narrative pages link here instead of restating these facts.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from codetr_serve.runtime import codec, decode, errors, protocol, settings, weight_errors
from codetr_serve.runtime.protocol import binary_tensors, kserve_v1
from codetr_serve.tools.markdown_table import table
from codetr_serve.tools.reference_metrics import metrics_section

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "docs" / "reference.md"
TS_CONFIG = REPO / "config" / "config.properties"

#: How each key of WireProtocol.option_sources reads, for an option named ``{o}``.
OPTION_SOURCE_LABELS = {
    "header": "headers {h}",
    "form_field": "multipart form field `{o}`",
    "json_field": "JSON field `{o}`",
    "instance_field": "`instances[i].{o}` (that image only)",
    "request_parameters": "`parameters.{o}`",
    "input_parameters": "`inputs[0].parameters.{o}`",
}


def summary(obj: Any) -> str:
    """The first sentence-line of an object's docstring, reST literals as Markdown code."""
    doc = (obj.__doc__ or "").strip()
    if not doc:
        raise SystemExit(f"{obj!r} has no docstring: docs/reference.md needs one line saying what it is")
    return doc.splitlines()[0].replace("``", "`")


def header_name(lower: str) -> str:
    """``x-request-id`` -> ``X-Request-ID`` (headers are case-insensitive; this is how we write them)."""
    return "-".join(part.upper() if part == "id" else part.capitalize() for part in lower.split("-"))


def option_headers() -> dict[str, str]:
    """option -> the header that sets it."""
    return {option: header_name(name) for name, option in codec.OPTION_HEADERS.items()}


def wire_section() -> str:
    formats = [[f"`POST {p.route}`", f"`{p.name}`", summary(sys.modules[type(p).__module__]),
                f"`{p.example}`"] for p in protocol.PROTOCOLS]
    order = ", ".join(f"`{p.name}`" for p in protocol.PROTOCOLS)
    return "\n\n".join([
        "## Routes and wire formats",
        table(["route (inference port)", "format", "what", "smallest body"], formats),
        "TorchServe 0.12 hands the handler the same request on each of these routes, without the URL, so the "
        f"body's shape picks the format, whichever route it came in on. Checked in this order: {order}; "
        "the last takes every body the others do not claim, and a JSON object with an `image` field is "
        "always `predictions`.",
        f"- `predictions` looks for the image in the request fields {_codes(codec.IMAGE_FIELDS)} (first "
        "present wins; a raw body arrives as `body`, a multipart file under its field name); JSON or text "
        "there holds `{\"image\": \"<base64>\"}`, the base64 string, or a `data:` URL.",
        f"- `kserve-v1`: each instance is a base64 string or an object with {_codes(kserve_v1.IMAGE_KEYS)}.",
        f"- `kserve-v2`: Triton's binary tensor extension is read when the `{binary_tensors.HEADER_LENGTH}` "
        "header is set; each element is then the raw image file.",
        f"- Image formats decoded: {_codes(sorted(decode.SUPPORTED_FORMATS))}. JSON nesting is limited to "
        f"{codec.MAX_JSON_DEPTH} levels.",
        "TorchServe's own routes answer outside the handler: `GET /ping` (inference port, token needed), "
        "`GET /metrics` (metrics port, no token), the management API (management port). TorchServe settings "
        "as shipped in [`config/config.properties`](../config/config.properties) (the image's "
        "[`docker/config.properties`](../docker/config.properties) differs in addresses and paths):",
        table(["key", "value"], [[f"`{k}`", f"`{v}`"] for k, v in ts_properties().items()]),
    ])


def ts_properties() -> dict[str, str]:
    """The key=value lines of config/config.properties, in file order."""
    lines = TS_CONFIG.read_text(encoding="utf-8").splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _codes(names: Any) -> str:
    return ", ".join(f"`{name}`" for name in names)


def option_allowed(option: str) -> str:
    """What the request parser accepts for ``option``, as its own error states it (asked with -1)."""
    try:
        codec.parse_options({option: -1}, codec.RequestLimits())
    except errors.InvalidOption as refused:
        bound = getattr(settings.ALLOWED.get(option), "high", None)
        named = f" (the upper bound is the handler setting [`{bound}`](#{bound}))" if isinstance(bound, str) \
            else ""
        return refused.allowed + named
    raise SystemExit(f"the codec accepts {option}=-1: state its range in codetr_serve/tools/reference.py")


def options_section() -> str:
    headers = option_headers()
    rows = [[f"`{o}`", option_allowed(o), f"handler setting [`{o}`](#{o})", f"`{headers[o]}`"]
            for o in headers]
    named = " / ".join(f"`{h}`" for h in headers.values())
    where = [[f"`{p.name}`", " < ".join(OPTION_SOURCE_LABELS[s].format(o="<option>", h=named)
                                         for s in p.option_sources)] for p in protocol.PROTOCOLS]
    return "\n\n".join([
        "## Per-request options",
        "Values may be JSON numbers or text (headers and form fields arrive as text); a value outside the "
        "range is `400 invalid_option`. Left out, the handler setting of the same name applies.",
        table(["option", "allowed", "when absent", "header"], rows),
        "Where each format takes them, lowest precedence first (a later source wins):",
        table(["format", "sources"], where),
    ])


def headers_section() -> str:
    rows = [[f"`{h}`", f"per-request option `{o}` (above)"] for o, h in option_headers().items()]
    rows.append([f"`{header_name(codec.REQUEST_ID_HEADER)}`",
                 f"the reply's `request_id` when it is 1-{codec.MAX_REQUEST_ID_LENGTH} visible ASCII "
                 "characters (else the server's own id); log lines about the request name it"])
    rows.append([f"`{binary_tensors.HEADER_LENGTH}`",
                 "`kserve-v2` only: length of the JSON header before Triton's binary tensor data"])
    return "## Request headers the handler reads\n\n" + table(["header", "effect"], rows)


def error_classes(module: Any, base: type) -> list[type]:
    """The error classes a module defines below ``base`` (nothing raises the base), by status then code."""
    found = [obj for obj in vars(module).values() if isinstance(obj, type) and issubclass(obj, base)
             and obj is not base and obj.__module__ == module.__name__]
    return sorted(found, key=lambda cls: (getattr(cls, "status", 0), cls.code))


def errors_section() -> str:
    catalog = errors.error_catalog()
    served = [[f"`{cls.code}`", catalog[cls.code], f"`{cls.__name__}`", summary(cls), cls.default_message]
              for cls in error_classes(errors, errors.ServingError)]
    startup = [[f"`{cls.code}`", f"`{cls.__name__}`", summary(cls)]
               for cls in error_classes(weight_errors, weight_errors.WeightsError)]
    return "\n\n".join([
        "## Error codes",
        "An error reply's body is `{\"error\": {\"code\", \"message\", \"status\"}, \"request_id\"}` "
        "(KServe formats: see [schema.md](schema.md#kserve-v1-and-v2-open-inference-protocol)); `code` is "
        "stable. The message below is the default; most errors say more (the value, the limit). Errors "
        "TorchServe answers before the handler runs have TorchServe's own body "
        "([schema.md](schema.md#errors)).",
        table(["code", "HTTP status", "class", "when", "default message"], served),
        "Start-up and packing errors (the archive build or the worker's start fails; never an HTTP reply), "
        "plus `SettingsError` for a bad handler setting:",
        table(["code", "class", "when"], startup),
    ])


def setting_comments() -> tuple[dict[str, str], dict[str, str]]:
    """defaults.yaml's own words: per key its line comment, and the section comment above it."""
    meaning: dict[str, str] = {}
    section: dict[str, str] = {}
    heading, after_blank = "", False
    for line in settings.DEFAULTS_FILE.read_text(encoding="utf-8").splitlines():
        key = re.match(r"([a-z_0-9]+):", line)
        if key:
            meaning[key.group(1)] = line.partition("#")[2].strip()
            section[key.group(1)] = heading
        elif line.startswith("#") and after_blank:
            heading = line.lstrip("#").strip()
        after_blank = not line.strip()
    return meaning, section


def yaml_value(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`" if value != "" else '`""`'


def allowed_text(name: str) -> str:
    rule = settings.ALLOWED.get(name)
    if rule is None:
        return "any"
    bounds = [f">= `{rule.low}`" if rule.low is not None else "", f"<= `{rule.high}`" if rule.high is not None
              else ""]
    parts = [" and ".join(b for b in bounds if b), _codes(rule.choices), rule.note]
    return "; ".join(part for part in parts if part)


def settings_section() -> str:
    meaning, section = setting_comments()
    types = {f.name: str(f.type) for f in dataclasses.fields(settings.ServingSettings)}
    defaults = settings.load_defaults()
    missing = sorted(key for key in defaults if not meaning.get(key))
    if missing:
        raise SystemExit(f"defaults.yaml: describe {missing} in a comment on the key's line")
    blocks: dict[str, list[list[Any]]] = {}
    for key, value in defaults.items():
        row = [f'<a id="{key}"></a>`{key}`', f"`{types[key]}`", yaml_value(value), allowed_text(key),
               meaning[key]]
        blocks.setdefault(section[key], []).append(row)
    parts = ["## Handler settings",
             "Set in the `handler:` section of the model's `model-config.yaml` (packed into the archive); "
             "defaults in [`codetr_serve/runtime/defaults.yaml`](../codetr_serve/runtime/defaults.yaml). "
             "An unknown key or a value outside `allowed` stops the worker at start-up with a "
             "`SettingsError` that names it."]
    for heading, rows in blocks.items():
        parts += [f"**{heading}**", table(["setting", "type", "default", "allowed", "what"], rows)]
    return "\n\n".join(parts)


def render() -> str:
    intro = ("# Reference\n\nGenerated from the code by `make reference` "
             "(`python -m codetr_serve.tools.reference`); do not edit by hand. "
             "Narrative: [README](../README.md), [schema](schema.md), [metrics](metrics.md), "
             "[architecture](architecture.md).")
    sections = [intro, wire_section(), options_section(), headers_section(), errors_section(),
                settings_section(), metrics_section()]
    return "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    args.output.write_text(render(), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
