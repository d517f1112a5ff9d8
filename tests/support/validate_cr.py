"""Validates custom resources against their CRD's openAPIV3Schema, strictly.

    python validate_cr.py CRD.yaml [CRD.yaml...] -- OBJECTS.yaml [OBJECTS.yaml...]

For tests/chart/, in the test venv (jsonschema comes with kubernetes-validate), since
kubernetes-validate knows no CRD. Every object of a kind the CRDs define is checked against its
version's schema as the API server would take it, and more strictly: a field the schema does not
name is an error (the API server would drop it in silence), unless the schema preserves unknown
fields. Objects of other kinds are left alone. Prints `ok KIND/NAME` per valid object and
`KIND/NAME: PATH: ERROR` per error; exits 1 on any error, 2 if no object was checked.
"""

import copy
import re
import sys

import jsonschema
import yaml


def strict(schema):
    """The schema with Kubernetes' structural rules spelt out for JSON Schema."""
    s = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if node.get("nullable") and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        if "pattern" in node:
            # Go's RE2 takes a flag group anywhere; Python only at the start.
            p = node["pattern"]
            flags = "".join(sorted(set(re.findall(r"\(\?([a-z]+)\)", p))))
            if flags:
                node["pattern"] = "(?%s)" % flags + re.sub(r"\(\?[a-z]+\)", "", p)
        for key in ("properties", "patternProperties"):
            for child in node.get(key, {}).values():
                walk(child)
        for key in ("items", "additionalProperties", "not"):
            walk(node.get(key))
        for key in ("anyOf", "allOf", "oneOf"):
            for child in node.get(key, []):
                walk(child)

    walk(s)
    # metadata is `type: object` in every CRD; the API server checks it as ObjectMeta.
    s.setdefault("properties", {})["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 253},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    return s


def schemas(crd_files):
    """(apiVersion, kind) -> strict schema, for every served version of the CRDs."""
    out = {}
    for path in crd_files:
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for version in spec["versions"]:
                    if version.get("served"):
                        key = ("%s/%s" % (spec["group"], version["name"]), spec["names"]["kind"])
                        out[key] = strict(version["schema"]["openAPIV3Schema"])
    return out


def objects(files):
    for path in files:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                for obj in doc if isinstance(doc, list) else [doc]:
                    if isinstance(obj, dict):
                        yield obj


def main(argv):
    if "--" not in argv:
        sys.exit(__doc__)
    split = argv.index("--")
    known = schemas(argv[:split])
    checked, errors = 0, 0
    for obj in objects(argv[split + 1 :]):
        schema = known.get((obj.get("apiVersion"), obj.get("kind")))
        if schema is None:
            continue
        checked += 1
        name = "%s/%s" % (obj["kind"], (obj.get("metadata") or {}).get("name", "?"))
        found = sorted(
            jsonschema.Draft4Validator(schema).iter_errors(obj), key=lambda e: list(e.absolute_path)
        )
        for e in found:
            path = ".".join(str(p) for p in e.absolute_path) or "(object)"
            print("%s: %s: %s" % (name, path, e.message))
        errors += len(found)
        if not found:
            print("ok %s" % name)
    if errors:
        sys.exit(1)
    if not checked:
        print("no object of the CRDs' kinds: %s" % sorted(k for _, k in known))
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
