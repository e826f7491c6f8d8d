"""Extracts the request and response schemas the edge fuzz suite needs from OpenAI's OpenAPI spec
and writes them, self-contained, as plain JSON Schema (draft 7) to `tests/fuzz/openai_schemas.json`.

The spec (https://github.com/openai/openai-openapi, `openapi.json`, about 3 MB) is not vendored:
only these few schemas are, with the commit they came from in the file's `source` header.

    python tools/openai_schemas.py --git-dir /path/to/openai-openapi.git [--rev main]
    python tools/openai_schemas.py --spec openapi.json --commit <sha>   # a checked-out file

What the conversion does, so that `hypothesis-jsonschema` and `jsonschema` read the result:
- every `$ref` is inlined; a reference back into a schema being expanded (recursion) becomes `{}`
  (anything), and so does any schema nested deeper than `MAX_DEPTH` references;
- OpenAPI's `nullable: true` becomes JSON Schema: "null" added to `type` (and `null` to `enum`), or
  `anyOf: [schema, {"type": "null"}]` when the schema has no `type`;
- siblings of a `$ref` (OpenAPI 3.1 merges them) join the target through `allOf`;
- annotations and OpenAPI-only keywords are dropped (`x-*`, `description`, `title`, `example(s)`,
  `default`, `deprecated`, `discriminator`, `readOnly`, `writeOnly`, `externalDocs`, `xml`) and so is
  `format` (OpenAPI formats such as `float`, `int64`, `binary` mean nothing to a validator).
Property names are data, never keywords: a property called `description` stays.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fuzz" / "openai_schemas.json"
REPOSITORY = "https://github.com/openai/openai-openapi"
SPEC_PATH = "openapi.json"
MAX_DEPTH = 24  # nested references; OpenAI's deepest chain for these schemas is about 8

SCHEMAS = (
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionRequest",
    "CreateCompletionResponse",
    "CreateEmbeddingRequest",
    "CreateEmbeddingResponse",
)
DROPPED = {"description", "title", "example", "examples", "default", "deprecated", "discriminator",
           "readOnly", "writeOnly", "externalDocs", "xml", "format", "nullable", "$comment"}
NAME_MAPS = {"properties", "patternProperties", "definitions", "$defs", "dependentSchemas"}
DATA = {"enum", "const", "required"}  # values kept as they are


class Converter:
    """Inlines references of one spec's `components/schemas` and rewrites OpenAPI into JSON Schema."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.components: dict[str, Any] = spec["components"]["schemas"]
        self.cut: set[str] = set()  # references replaced by {} (recursion or depth)

    def schema(self, name: str) -> Any:
        return self._convert(self.components[name], (name,))

    def _resolve(self, ref: str, stack: tuple[str, ...]) -> Any:
        prefix = "#/components/schemas/"
        if not ref.startswith(prefix):
            raise ValueError(f"unsupported reference {ref!r}")
        name = ref.removeprefix(prefix)
        if name in stack or len(stack) >= MAX_DEPTH:
            self.cut.add(name)
            return {}
        return self._convert(self.components[name], (*stack, name))

    def _convert(self, node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [self._convert(item, stack) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in DROPPED or key.startswith("x-") or key == "$ref":
                continue
            if key in NAME_MAPS and isinstance(value, dict):
                out[key] = {name: self._convert(sub, stack) for name, sub in value.items()}
            elif key in DATA:
                out[key] = value
            else:
                out[key] = self._convert(value, stack)
        if "$ref" in node:
            target = self._resolve(node["$ref"], stack)
            out = target if not out else {"allOf": [target, out]}
        if node.get("nullable") is True:
            out = _nullable(out)
        return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, also accepting null."""
    if not schema:
        return schema  # {} accepts null already
    kind = schema.get("type")
    if isinstance(kind, str | list) and not any(k in schema for k in ("allOf", "anyOf", "oneOf", "not")):
        kinds = [kind] if isinstance(kind, str) else list(kind)
        out = {**schema, "type": kinds if "null" in kinds else [*kinds, "null"]}
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


def read_spec(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The spec and the commit it came from."""
    if args.spec:
        if not args.commit:
            sys.exit("--spec needs --commit: the openai-openapi commit the file was taken from")
        return json.loads(Path(args.spec).read_text()), args.commit

    def git(*argv: str) -> bytes:
        done = subprocess.run(["git", "--git-dir", args.git_dir, *argv], check=True, capture_output=True)
        return done.stdout

    commit = git("rev-parse", f"{args.rev}^{{commit}}").decode().strip()
    return json.loads(git("show", f"{commit}:{SPEC_PATH}")), commit


def extract(spec: dict[str, Any], commit: str) -> dict[str, Any]:
    converter = Converter(spec)
    # Keys sorted inside the schemas (stable diffs between spec versions); the header stays first.
    schemas = json.loads(json.dumps({name: converter.schema(name) for name in SCHEMAS}, sort_keys=True))
    return {
        "source": {"repository": REPOSITORY, "path": SPEC_PATH, "commit": commit,
                   "spec_version": spec.get("info", {}).get("version")},
        "generated_by": "tools/openai_schemas.py",
        "dialect": "http://json-schema.org/draft-07/schema#",
        "recursion_cut": sorted(converter.cut),
        "schemas": schemas,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--git-dir", help="a clone (bare is fine) of openai/openai-openapi")
    source.add_argument("--spec", help="a local copy of openapi.json (then --commit is required)")
    parser.add_argument("--rev", default="HEAD", help="with --git-dir: the revision to read (default HEAD)")
    parser.add_argument("--commit", help="with --spec: the commit the file was taken from")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    spec, commit = read_spec(args)
    document = extract(spec, commit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    size = args.out.stat().st_size
    print(f"{args.out}: {len(document['schemas'])} schemas from {REPOSITORY}@{commit[:12]}, {size} bytes")


if __name__ == "__main__":
    main()
