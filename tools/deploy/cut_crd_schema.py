"""Cut the part of a CRD's openAPIV3Schema that the chart renders, as a strict JSON
schema for tests/deploy (kubernetes-validate knows no custom resources).

    python tools/deploy/cut_crd_schema.py CRD.yaml VERSION SOURCE PATH... > OUT.json

Each PATH names a field to keep with all it holds (``spec.endpoints.port``; a list's
items are walked through). Descriptions are dropped, and every object that lists its
properties gets ``additionalProperties: false``: a field the chart misspells fails, as
kubernetes-validate --strict fails one on a built-in kind. SOURCE says where the CRD
came from (repository, tag, path) and is kept in the output's ``$comment``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items() if key != "description"}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _keep(schema: dict[str, Any], paths: list[list[str]]) -> dict[str, Any]:
    """``schema`` with only the properties on ``paths`` (each kept whole at its end)."""
    if any(not path for path in paths):
        return schema
    if schema.get("type") == "array":
        return {**schema, "items": _keep(schema["items"], paths)}
    properties = schema["properties"]
    kept: dict[str, Any] = {}
    for name in dict.fromkeys(path[0] for path in paths):
        if name not in properties:
            raise SystemExit(f"no field {name!r} in the CRD's schema")
        kept[name] = _keep(properties[name], [path[1:] for path in paths if path[0] == name])
    required = [name for name in schema.get("required", []) if name in kept]
    cut = {**schema, "properties": kept}
    if required:
        cut["required"] = required
    else:
        cut.pop("required", None)
    return cut


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        sys.stderr.write(__doc__ or "")
        return 2
    crd_file, version, source, *paths = argv
    crd = yaml.safe_load(Path(crd_file).read_text(encoding="utf-8"))
    (schema,) = (
        entry["schema"]["openAPIV3Schema"]
        for entry in crd["spec"]["versions"]
        if entry["name"] == version
    )
    cut = _strict(_keep(schema, [path.split(".") for path in paths]))
    names = crd["spec"]["names"]
    cut["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version}"}
    cut["properties"]["kind"] = {"const": names["kind"]}
    cut["required"] = sorted({"apiVersion", "kind", "metadata", *cut.get("required", [])})
    out = {"$comment": f"cut from {source} by tools/deploy/cut_crd_schema.py", **cut}
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
