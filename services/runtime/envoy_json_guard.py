"""The edge's JSON guard (docs/edge.md, "Strict JSON"): two Envoy filters that refuse, before the
transcoder sees it, what OpenAI refuses with 400 and the transcoder would accept.

The transcoder parses JSON leniently (single quotes, bare keys, trailing commas, raw control
characters) and whatever the Content-Type says. So:

1. `json_to_metadata` parses every `application/json` body once more with Envoy's strict JSON
   parser and marks a body it cannot parse in dynamic metadata (`aggregator.json: invalid`; it
   marks every request of another content type so too, which the next filter ignores);
2. `rbac` denies a request so marked, and a request that carries a body to a JSON endpoint with
   another Content-Type (none, text/plain, XML, form data). Endpoints whose body is raw
   (`google.api.HttpBody`: the multipart image uploads) and native gRPC are exempt.

Envoy answers a denied request itself; `envoy_replies.local_reply_config` turns that reply into a
400 with OpenAI's message for a body that is not JSON.
"""

from __future__ import annotations

from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

_T = "@type"
_FILTERS = "type.googleapis.com/envoy.extensions.filters.http"
NAMESPACE = "aggregator.json"
# What Envoy puts in the response code details of a request these filters refuse.
DENIED_DETAILS_PREFIX = "rbac_access_denied_matched_policy"
JSON_TYPES = r"(?i)application/json\s*(;.*)?"
_BODY_METHODS = ("POST", "PUT", "PATCH")


def raw_body_paths(descriptor_set: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """The HTTP paths whose request is a raw `google.api.HttpBody` (multipart uploads)."""
    paths = []
    for file in descriptor_set.file:
        for service in file.service:
            for method in service.method:
                if method.input_type != ".google.api.HttpBody":
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                for binding in (rule, *rule.additional_bindings):
                    path = getattr(binding, binding.WhichOneof("pattern") or "get", "")
                    if path:
                        paths.append(path)
    return sorted(set(paths))


def json_to_metadata_filter() -> dict[str, Any]:
    """Marks a JSON body that Envoy's strict parser refuses. A rule needs a selector and an
    on_present or on_missing action: `model`, which every JSON endpoint has, with on_missing only,
    so a well-formed request writes no metadata at all."""
    return {
        "name": "envoy.filters.http.json_to_metadata",
        "typed_config": {
            _T: f"{_FILTERS}.json_to_metadata.v3.JsonToMetadata",
            "request_rules": {
                "allow_content_types_regex": {"regex": JSON_TYPES},
                "rules": [
                    {
                        "selectors": [{"key": "model"}],
                        "on_missing": {"metadata_namespace": NAMESPACE, "key": "model",
                                       "value": False},
                        "on_error": {"metadata_namespace": NAMESPACE, "key": "invalid",
                                     "value": True},
                    }
                ],
            },
        },
    }


def _header(name: str, **match: Any) -> dict[str, Any]:
    return {"header": {"name": name, **match}}


def _any_of(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"or_rules": {"rules": rules}}


def rbac_filter(raw_paths: list[str]) -> dict[str, Any]:
    """Denies a body Envoy could not parse, and a body sent to a JSON endpoint as something else."""
    json_type = _header("content-type", string_match={"safe_regex": {"regex": JSON_TYPES}})
    has_body = _any_of([
        _header("content-length", range_match={"start": 1, "end": 2**62}),
        _header("transfer-encoding", present_match=True),
    ])
    not_json = {
        "and_rules": {
            "rules": [
                _any_of([_header(":method", string_match={"exact": m}) for m in _BODY_METHODS]),
                has_body,
                {"not_rule": json_type},
                {"not_rule": _header("content-type",
                                     string_match={"prefix": "application/grpc", "ignore_case": True})},
                *({"not_rule": {"url_path": {"path": {"exact": path}}}} for path in raw_paths),
            ]
        }
    }
    # json_to_metadata also takes its on_error path for every other content type (a GET, an upload).
    unparsable = {
        "and_rules": {
            "rules": [
                json_type,
                {
                    "sourced_metadata": {
                        "metadata_matcher": {
                            "filter": NAMESPACE,
                            "path": [{"key": "invalid"}],
                            "value": {"bool_match": True},
                        }
                    }
                },
            ]
        }
    }
    everyone = [{"any": True}]
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            _T: f"{_FILTERS}.rbac.v3.RBAC",
            "rules": {
                "action": "DENY",
                "policies": {
                    "not_json": {"permissions": [not_json], "principals": everyone},
                    "invalid_json": {"permissions": [unparsable], "principals": everyone},
                },
            },
        },
    }
