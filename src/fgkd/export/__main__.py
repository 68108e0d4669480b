"""``python -m fgkd.export ckpt=… [format=onnx] [dynamic=true] [nms=true] [half=false] …`` (see fgkd.export)."""

from __future__ import annotations

import dataclasses
import sys

from fgkd.export import ExportOptions, export

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse(argv: list[str]) -> ExportOptions:
    """``key=value`` arguments into :class:`ExportOptions`; unknown keys and bad values name the key."""
    fields = {f.name: f for f in dataclasses.fields(ExportOptions)}
    values: dict[str, object] = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {item!r}; keys: {', '.join(fields)}")
        if key not in fields:
            raise ValueError(f"unknown option {key!r}; keys: {', '.join(fields)}")
        kind = str(fields[key].type)
        if "bool" in kind:
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError(f"{key}={value!r}: expected true or false")
            values[key] = value.lower() in _TRUE
        elif "int" in kind:
            try:
                values[key] = None if value.lower() in ("null", "none") else int(value)
            except ValueError:
                raise ValueError(f"{key}={value!r}: expected an integer") from None
        elif "float" in kind:
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError(f"{key}={value!r}: expected a number") from None
        else:
            values[key] = value
    if "ckpt" not in values:
        raise ValueError("ckpt=<detector.pt | anomaly.pt> is required")
    options = ExportOptions(**values)  # type: ignore[arg-type]
    options.check()
    return options


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse(sys.argv[1:] if argv is None else argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        export(options)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
