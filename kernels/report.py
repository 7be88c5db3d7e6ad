"""The ``tether.bench/1`` document, its schema and validator, and the results table.

The schema is a JSON-Schema-style dict (the subset: type, properties, required, items, enum,
minimum, additionalProperties) checked by :func:`validate`, a small hand-written validator, so the
suite needs no jsonschema dependency. The table uses rich when it is installed, plain text
otherwise.
"""

from __future__ import annotations

import datetime as _dt
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from . import __version__, roofline
from .cardstate import flags

SCHEMA_ID = "tether.bench/1"

_NUM = ["number", "null"]
_PREC = {"enum": list(roofline.ALL_PRECISIONS)}
_PEAKS: dict[str, Any] = {
    "type": "object",
    "required": ["flops", "dram_bytes_per_s"],
    "properties": {
        "flops": {
            "type": "object",
            "required": list(roofline.PRECISIONS),
            "properties": {p: {"type": _NUM, "minimum": 0} for p in roofline.PRECISIONS},
        },
        "dram_bytes_per_s": {"type": _NUM, "minimum": 0},
    },
}

SCHEMA: dict[str, Any] = {
    "$id": SCHEMA_ID,
    "type": "object",
    "required": ["schema", "created", "simulator", "device", "theoretical", "measured", "results"],
    "properties": {
        "schema": {"enum": [SCHEMA_ID]},
        "created": {"type": "string"},
        "tool": {"type": "object"},
        "simulator": {"type": "boolean"},
        "device": {
            "type": "object",
            "required": ["name", "simulator"],
            "properties": {"name": {"type": "string"}, "simulator": {"type": "boolean"}},
        },
        "theoretical": {
            "type": "object",
            "required": ["flops", "dram_bytes_per_s", "source"],
            "properties": {**_PEAKS["properties"], "source": {"type": ["string", "null"]}},
        },
        "measured": _PEAKS,
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "kernel",
                    "variant",
                    "precision",
                    "shape",
                    "flops",
                    "bytes",
                    "ai",
                    "time_s",
                    "flops_per_s",
                    "bytes_per_s",
                    "bound",
                    "roofline_fraction",
                    "verified",
                    "max_rel_err",
                    "simulated",
                ],
                "properties": {
                    "family": {"type": "string"},
                    "kernel": {"type": "string"},
                    "variant": {"type": "string"},
                    "precision": _PREC,
                    "compute_precision": _PREC,
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "flops": {"type": "integer", "minimum": 0},
                    "bytes": {"type": "integer", "minimum": 0},
                    "ai": {"type": _NUM, "minimum": 0},
                    "time_s": {
                        "type": ["object", "null"],
                        "required": ["median", "min", "max", "n"],
                        "properties": {
                            "median": {"type": "number", "minimum": 0},
                            "min": {"type": "number", "minimum": 0},
                            "max": {"type": "number", "minimum": 0},
                            "n": {"type": "integer", "minimum": 1},
                        },
                    },
                    "flops_per_s": {"type": _NUM, "minimum": 0},
                    "bytes_per_s": {"type": _NUM, "minimum": 0},
                    "bound": {"enum": ["memory", "compute", None]},
                    "roofline_fraction": {"type": _NUM, "minimum": 0},
                    "verified": {"type": "boolean"},
                    "max_rel_err": {"type": _NUM, "minimum": 0},
                    "tolerance": {"type": _NUM, "minimum": 0},
                    "simulated": {"type": "boolean"},
                    "source": {"type": "string"},
                    "error": {"type": ["string", "null"]},
                    "card": {"type": ["object", "null"]},
                },
            },
        },
    },
}

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(v: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, _TYPES[t])


def _check(v: Any, s: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if "enum" in s and v not in s["enum"]:
        errors.append(f"{path}: {v!r} is not one of {s['enum']}")
        return
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(_is_type(v, t) for t in types):
            errors.append(f"{path}: expected {' or '.join(types)}, got {type(v).__name__}")
            return
    if "minimum" in s and _is_type(v, "number") and v < s["minimum"]:
        errors.append(f"{path}: {v!r} is below {s['minimum']}")
    if isinstance(v, dict):
        for k in s.get("required", []):
            if k not in v:
                errors.append(f"{path}: missing {k!r}")
        for k, sub in s.get("properties", {}).items():
            if k in v:
                _check(v[k], sub, f"{path}.{k}", errors)
    if isinstance(v, list) and "items" in s:
        for i, item in enumerate(v):
            _check(item, s["items"], f"{path}[{i}]", errors)


def validate(doc: Any, schema: Mapping[str, Any] = SCHEMA) -> list[str]:
    """Check a document against the schema; returns the problems found (empty = valid).

    Beyond the schema: a simulated result must not carry a roofline fraction, and a result that
    was not verified must not carry a time.
    """
    errors: list[str] = []
    _check(doc, schema, "$", errors)
    if errors or not isinstance(doc, dict):
        return errors
    for i, r in enumerate(doc["results"]):
        if r.get("simulated") and r.get("roofline_fraction") is not None:
            errors.append(f"$.results[{i}]: simulated result placed on the roofline")
        if not r.get("verified") and r.get("time_s") is not None:
            errors.append(f"$.results[{i}]: timed although not verified")
    return errors


def build_document(
    device: Mapping[str, Any], results: Sequence[Mapping[str, Any]], *, simulator: bool
) -> dict[str, Any]:
    """Assemble a ``tether.bench/1`` document."""
    peaks = dict(device.get("peaks") or {})
    flops = dict(peaks.get("flops") or {})
    theoretical = {
        "flops": {p: flops.get(p) for p in roofline.PRECISIONS},
        "dram_bytes_per_s": peaks.get("dram_bytes_per_s"),
        "source": device.get("peaks_source"),
    }
    return {
        "schema": SCHEMA_ID,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": {"name": "tether.kernels", "version": __version__},
        "simulator": bool(simulator),
        "device": dict(device),
        "theoretical": theoretical,
        "measured": roofline.measured_ceilings(list(results)),
        "results": [dict(r) for r in results],
    }


def si(v: float | None, unit: str = "") -> str:
    """Engineering notation: 1.23 T, 456 G..."""
    if v is None:
        return "-"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}".rstrip()


def _time(t: Mapping[str, Any] | None) -> str:
    if not t:
        return "-"
    m = float(t["median"])
    return f"{m * 1e6:.1f} us" if m < 1e-3 else f"{m * 1e3:.3f} ms"


COLUMNS = (
    "kernel",
    "precision",
    "shape",
    "time (median)",
    "GFLOP/s",
    "GB/s",
    "AI (F/B)",
    "bound",
    "% of roofline",
    "check",
    "card",
)


def rows(doc: Mapping[str, Any]) -> list[list[str]]:
    """The table rows, as strings."""
    out = []
    for r in doc["results"]:
        label = f"{r['kernel']}/{r['variant']}" if r.get("variant") else r["kernel"]
        prec = r["precision"]
        if r.get("compute_precision") and r["compute_precision"] != prec:
            prec = f"{prec} ({r['compute_precision']} acc)"
        frac = r.get("roofline_fraction")
        if r.get("verified"):
            check = f"ok {r['max_rel_err']:.1e}" if r.get("max_rel_err") is not None else "ok"
        else:
            check = "FAILED"
        out.append(
            [
                label,
                prec,
                "x".join(str(s) for s in r["shape"]),
                _time(r.get("time_s")) + (" (sim)" if r.get("simulated") else ""),
                f"{r['flops_per_s'] / 1e9:.1f}" if r.get("flops_per_s") is not None else "-",
                f"{r['bytes_per_s'] / 1e9:.1f}" if r.get("bytes_per_s") is not None else "-",
                f"{r['ai']:.3g}" if r.get("ai") is not None else "-",
                r.get("bound") or "-",
                f"{100 * frac:.1f}%" if frac is not None else "-",
                check,
                flags(r.get("card")),
            ]
        )
    return out


def ceiling_lines(doc: Mapping[str, Any]) -> list[str]:
    """One line per measured ceiling: its value, its share of the theoretical peak, and the
    result (kernel/variant) that defines it -- the roof users judge their kernels against."""
    meas, theo = doc.get("measured") or {}, doc.get("theoretical") or {}
    src = meas.get("from") or {}
    out = []

    def pct(v: float, peak: float | None) -> str:
        return f" ({100 * v / peak:.0f} % of {si(peak)})" if peak else ""

    bw = meas.get("dram_bytes_per_s")
    if bw:
        out.append(f"DRAM ceiling {si(bw, 'B/s')}{pct(bw, theo.get('dram_bytes_per_s'))} "
                   f"from {src.get('dram', '?')}")  # fmt: skip
    for prec, v in (meas.get("flops") or {}).items():
        if v:
            peak = (theo.get("flops") or {}).get(prec)
            out.append(f"{prec} FMA ceiling {si(v, 'FLOP/s')}{pct(v, peak)} from {src.get(prec)}")
    for prec, v in (meas.get("library") or {}).items():
        out.append(f"{prec} library GEMM ceiling {si(v, 'OP/s' if prec == 'int8' else 'FLOP/s')}")
    return out


def markdown(doc: Mapping[str, Any]) -> str:
    """The document as markdown: who/when/what versions, the ceilings, and the results table
    (flags for throttled or shared runs in the ``card`` column)."""
    dev = doc["device"]
    versions = ", ".join(f"{k} {v or '-'}" for k, v in (dev.get("versions") or {}).items())
    lines = [
        f"# {_title(doc)}",
        "",
        f"- date: {doc.get('created')}",
        f"- device: {dev.get('name')} (driver {dev.get('driver_version') or '-'}, "
        f"compute capability {'.'.join(map(str, dev.get('compute_capability') or [])) or '-'})",
        f"- versions: {versions or '-'}",
        f"- peaks from: {dev.get('peaks_source') or '-'}",
    ]
    lines += [f"- {c}" for c in ceiling_lines(doc)]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows(doc)]
    errors = [r for r in doc["results"] if r.get("error")]
    if errors:
        lines.append("")
        lines += [f"- {r['kernel']}/{r['variant']} {r['precision']}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


def _title(doc: Mapping[str, Any]) -> str:
    dev = doc["device"]
    title = f"tether roofline suite on {dev.get('name')}"
    if doc.get("simulator"):
        title += " (SIMULATOR: times are not GPU figures and are not placed on the roofline)"
    return title


def render_plain(doc: Mapping[str, Any]) -> str:
    """The table as plain text (no rich)."""
    table = [list(COLUMNS), *rows(doc)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = [_title(doc)]
    for j, row in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ceiling_lines(doc)
    for r in doc["results"]:
        if r.get("error"):
            lines.append(f"{r['kernel']}/{r['variant']} {r['precision']}: {r['error']}")
    return "\n".join(lines)


def print_table(doc: Mapping[str, Any], file: Any = None) -> None:
    """Print the results table with rich if available, else plain text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(render_plain(doc), file=file)
        return
    table = Table(title=_title(doc))
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("kernel", "precision", "bound") else "right")
    for row, r in zip(rows(doc), doc["results"], strict=True):
        style = None if r.get("verified") else "red"
        table.add_row(*row, style=style)
    stream = file if file is not None else sys.stdout
    console = Console(file=file, width=None if stream.isatty() else 160)
    console.print(table)
    for line in ceiling_lines(doc):
        console.print(line)
    for r in doc["results"]:
        if r.get("error"):
            console.print(f"[red]{r['kernel']}/{r['variant']} {r['precision']}: {r['error']}[/]")
