"""Extract the Kubernetes PodTemplateSpec and NetworkPolicy schemas (each with every definition it uses,
descriptions removed) from a kubernetes-validate wheel into k8s-v1.37-podtemplatespec.json and
k8s-v1.37-networkpolicy.json beside this file.

    python deploy/schemas/extract_podtemplatespec.py kubernetes_validate-1.37.0-py3-none-any.whl
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

VERSION = "v1.37.0"
ROOTS = {"podtemplatespec": "io.k8s.api.core.v1.PodTemplateSpec", "networkpolicy": "io.k8s.api.networking.v1.NetworkPolicy"}


def strip(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(o, list):
        return [strip(v) for v in o]
    return o


def extract(defs: dict[str, Any], root: str, wheel: str, schema: str) -> dict[str, Any]:
    need: set[str] = set()
    todo = [root]
    while todo:
        k = todo.pop()
        if k not in need:
            need.add(k)
            todo += re.findall(r"#/\$defs/([\w.\-]+)", json.dumps(defs[k]))
    return {
        "$schema": schema,
        "$comment": f"Kubernetes {VERSION} {root.rsplit('.', 1)[-1]} and the definitions it uses (strict: additionalProperties false), "
        f"extracted from {Path(wheel).name} (PyPI, Apache-2.0; kubernetes-json-schema/{VERSION}-local-strict/_definitions.json) "
        "with descriptions removed. Regenerate with deploy/schemas/README.md.",
        "$ref": f"#/$defs/{root}",
        "$defs": {k: strip(defs[k]) for k in sorted(need)},
    }


def main(wheel: str) -> None:
    z = zipfile.ZipFile(wheel)
    d = json.loads(z.read(f"kubernetes_validate/kubernetes-json-schema/{VERSION}-local-strict/_definitions.json"))
    schema = d.get("$schema", "https://json-schema.org/draft/2020-12/schema")
    for name, root in ROOTS.items():
        out = extract(d["$defs"], root, wheel, schema)
        Path(__file__).with_name(f"k8s-v1.37-{name}.json").write_text(json.dumps(out, separators=(",", ":"), sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
