"""The OpenAPI document declares what each operation really answers: its success status
and its problem documents (application/problem+json, one Problem schema)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.service.test_datasets import assert_problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _responses(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return spec["paths"][path][method]["responses"]  # type: ignore[no-any-return]


def test_every_api_operation_declares_its_problems(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem["required"])
    operations = [(path, method, op) for path, item in spec["paths"].items()
                  for method, op in item.items() if path.startswith("/v1/")]
    assert len(operations) >= 20
    for path, method, op in operations:
        statuses = set(op["responses"])
        assert {"401", "422", "503"} <= statuses, (method, path, statuses)
        if "{" in path:
            assert "404" in statuses, (method, path)
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                assert response["content"] == {"application/problem+json":
                                               {"schema": PROBLEM_REF}}, (method, path, status)
        assert "503" in statuses and "Retry-After" in op["responses"]["503"]["headers"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_operations_declare_their_own_statuses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    expected = {
        ("post", "/v1/datasets"): {"201", "400", "413", "415"},
        ("post", "/v1/models"): {"201", "400", "413", "415"},
        ("get", "/v1/datasets"): {"200", "400"},
        ("get", "/v1/jobs"): {"200", "400"},
        ("delete", "/v1/datasets/{dataset_id}"): {"204", "404", "409"},
        ("delete", "/v1/models/{model_id}"): {"204", "404", "409"},
        ("post", "/v1/jobs"): {"200", "202", "400", "404", "409"},
        ("delete", "/v1/jobs/{job_id}"): {"204", "404", "409"},
        ("get", "/v1/jobs/{job_id}/result"): {"200", "404", "409"},
        ("get", "/v1/jobs/{job_id}/plots/{name}.png"): {"200", "404", "409"},
        ("get", "/readyz"): {"200", "503"},
    }
    for (method, path), statuses in expected.items():
        assert statuses <= set(_responses(spec, method, path)), (method, path)
    assert "401" in _responses(spec, "get", "/v1/datasets")
    assert "WWW-Authenticate" in _responses(spec, "get", "/v1/datasets")["401"]["headers"]
    assert set(_responses(spec, "get", "/healthz")) == {"200"}


def test_a_wrong_method_is_405_with_allow_naming_every_method(client: TestClient) -> None:
    for method, path, allowed in [("PUT", "/v1/datasets", "GET, POST"),
                                  ("PATCH", "/v1/datasets/ds_1", "DELETE, GET"),
                                  ("POST", "/v1/jobs/job_1", "DELETE, GET"),
                                  ("GET", "/v1/jobs/job_1/cancel", "POST"),
                                  ("POST", "/healthz", "GET")]:
        response = client.request(method, path)
        body = assert_problem(response, 405, "method_not_allowed")
        assert response.headers["allow"] == allowed, (method, path)
        assert allowed in body["detail"]
