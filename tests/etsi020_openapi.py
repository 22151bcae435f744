"""ETSI GS QKD 020 messages checked against ETSI's OpenAPI description, with openapi-schema-validator (tests only)."""

from __future__ import annotations

from typing import Any

import yaml

from qcinode.kme.etsi020 import OPENAPI_PATH


class OpenApi:
    """Validates 020 requests and responses with openapi-schema-validator (JSON Schema 2020-12 + OAS 3.1)."""

    def __init__(self) -> None:
        from openapi_schema_validator import OAS31Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self.doc = yaml.safe_load(OPENAPI_PATH.read_text())
        self._registry = Registry().with_resource("urn:etsi020", Resource.from_contents(self.doc, default_specification=DRAFT202012))
        self._validator = OAS31Validator

    def _check(self, ref: str, instance: Any) -> list[str]:
        pointer = ref.removeprefix("#")
        validator = self._validator({"$ref": f"urn:etsi020#{pointer}"}, registry=self._registry, format_checker=self._validator.FORMAT_CHECKER)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]

    def validate(self, exchange: dict[str, Any]) -> list[str]:
        operation = self.doc["paths"].get(exchange["path"], {}).get(exchange["method"].lower())
        if operation is None:
            return [f"{exchange['method']} {exchange['path']} is not an operation of the API"]
        problems: list[str] = []
        body_spec = operation.get("requestBody")
        if body_spec is not None:
            problems += self._check(body_spec["content"]["application/json"]["schema"]["$ref"], exchange["request"])
        responses = operation["responses"]
        status = str(exchange["status"])
        if status not in responses:
            return problems + [f"status {status} is not a response of {exchange['path']}"]
        response = responses[status]
        if "$ref" in response:
            response = self.doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        content = response.get("content")
        if content is None:
            if exchange["response"] is not None:
                problems.append(f"{exchange['path']} {status} carries a body the API does not define")
        else:
            problems += self._check(content["application/json"]["schema"]["$ref"], exchange["response"])
        return problems

    def schema_errors(self, name: str, instance: Any) -> list[str]:
        """Errors of ``instance`` against ``#/components/schemas/NAME``."""
        return self._check(f"#/components/schemas/{name}", instance)
