"""The FL API over HTTP without an FL server: the key, the OpenAPI description, and the request checks that come
before any FLARE call (uvicorn on 127.0.0.1; its admin kit is a folder without a kit, so a request that reaches the
FL server gets the 502 a real unreachable server gives).

The routes against a real provisioned network: tests/e2e/test_fl_api.py."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest

from flip.api.app import create_app
from flip.api.flare import Flare
from flip.api.settings import ServiceConfig
from tests.replicas.serve import Served

pytestmark = pytest.mark.http

KEY = "a-key-of-the-fl-api-0123456789"
HEADER = "X-Internal-Service-Key"
#: the routes FLIP's hub calls (fl_service.py), with the method it uses
HUB_ROUTES = {
    ("/upload_app/{model_id}", "post"),
    ("/submit_job/{job_folder}", "post"),
    ("/list_jobs", "get"),
    ("/abort_job/{job_id}", "delete"),
    ("/check_server_status", "get"),
    ("/check_client_status", "get"),
}
BODY = {"project_id": "p", "cohort_query": "SELECT 1", "trusts": ["Trust_1"], "bundle_urls": []}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    config = ServiceConfig(key=KEY, bundle_bucket="flip-bundles", bundle_root=root.resolve())
    flare = Flare(tmp_path_factory.mktemp("no-kit"), "admin@flip.org", connect_timeout=1)
    with Served(create_app(config, flare), "fl-api") as served:
        yield served, root


def call(served, method: str, path: str, body=None, key: str | None = KEY, raw_body: bytes | None = None):
    """One request as it is written (the path is not normalised); returns (status, parsed JSON or text)."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    headers = {HEADER: key} if key is not None else {}
    data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None or method == "POST":
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=data, headers=headers)
        reply = connection.getresponse()
        text = reply.read().decode()
    finally:
        connection.close()
    try:
        return reply.status, json.loads(text)
    except ValueError:
        return reply.status, text


def test_health_and_the_description_are_open_everything_else_needs_the_key(service):
    served, _ = service
    assert call(served, "GET", "/health/", key=None) == (200, {"status": "healthy"})
    status, spec = call(served, "GET", "/openapi.json", key=None)
    assert status == 200 and spec["info"]["title"] == "FLIP FL API (flip on NVFlare)"
    for path, method in sorted(HUB_ROUTES):
        concrete = (
            path.replace("{model_id}", "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90")
            .replace("{job_folder}", "x")
            .replace("{job_id}", "x")
        )
        for key in (None, "wrong-key", KEY + "x", KEY[:-1]):
            assert call(served, method.upper(), concrete, BODY, key=key) == (
                401,
                {"detail": f"missing or wrong {HEADER} header"},
            ), (path, key)
    assert call(served, "GET", "/no/such/route", key=None)[0] == 401  # routes are not even revealed


def test_the_openapi_description_lists_the_hubs_routes_with_their_schemas_and_the_key(service):
    served, _ = service
    _, spec = call(served, "GET", "/openapi.json", key=None)
    routes = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert HUB_ROUTES <= routes and ("/health/", "get") in routes
    assert spec["components"]["securitySchemes"] == {"ServiceKey": {"type": "apiKey", "in": "header", "name": HEADER}}
    for path, method in HUB_ROUTES:
        operation = spec["paths"][path][method]
        assert operation["security"] == [{"ServiceKey": []}], path
        assert {"400", "401", "404", "502"} <= set(operation["responses"]), path
    assert "security" not in spec["paths"]["/health/"]["get"]
    schemas = spec["components"]["schemas"]
    upload = schemas["UploadAppRequest"]
    assert set(upload["required"]) == {"project_id", "cohort_query", "trusts", "bundle_urls"}
    assert {
        "global_rounds",
        "local_rounds",
        "aggregator",
        "aggregation_weights",
        "ignore_result_error",
        "job_type",
    } <= set(upload["properties"])
    assert schemas["JobMetadata"]["properties"]["status"] == {"$ref": "#/components/schemas/JobStatus"}
    assert schemas["JobStatus"]["enum"] == ["PENDING", "RUNNING", "FINISHED", "FAILED", "STOPPED"]
    assert set(schemas["ClientInfoModel"]["required"]) == {"name", "status"}
    assert (
        spec["paths"]["/submit_job/{job_folder}"]["post"]["responses"]["200"]["content"]["application/json"]["schema"][
            "type"
        ]
        == "string"
    )
    listed = spec["paths"]["/list_jobs"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed["type"] == "array" and listed["items"] == {"$ref": "#/components/schemas/JobMetadata"}


def test_a_request_that_reaches_an_unreachable_fl_server_is_a_502_with_the_cause(service):
    served, root = service
    (root / "app.py").write_text("x")
    body = {**BODY, "bundle_urls": [f"file://{root}/app.py"]}
    for method, path, sent in (
        ("GET", "/list_jobs", None),
        ("GET", "/check_server_status", None),
        ("GET", "/check_client_status?targets=Trust_1", None),
        ("POST", "/upload_app/0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90", body),
    ):
        status, reply = call(served, method, path, sent)
        assert status == 502, (path, reply)
        assert reply["detail"].startswith("cannot reach the FL server with the admin kit "), path
        assert "Traceback" not in reply["detail"]


def test_a_body_of_the_wrong_shape_is_422_naming_the_field_never_echoing_it(service):
    served, _ = service
    secret = "ENCRYPTED-PROJECT-ENVELOPE"
    status, reply = call(
        served,
        "POST",
        "/upload_app/0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90",
        {"project_id": ["x"], "cohort_query": secret, "trusts": secret},
    )
    assert status == 422
    assert reply["detail"].startswith("body.project_id: Input should be a valid string; body.trusts: ")
    assert "body.bundle_urls: Field required" in reply["detail"] and secret not in json.dumps(reply)
    assert call(served, "POST", "/upload_app/0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90", raw_body=b"{not json")[0] == 422
    assert call(served, "GET", "/list_jobs?limit=-1")[0] == 422


def test_an_older_hubs_body_is_taken_and_unknown_fields_ignored(service):
    served, root = service
    (root / "app.py").write_text("x")
    older = {
        **BODY,
        "bundle_urls": [f"file://{root}/app.py"],
        "global_rounds": 2,
        "local_rounds": 1,
        "ignore_result_error": False,
        "aggregator": "InTimeAccumulateWeightedAggregator",
        "aggregation_weights": {},
        "job_type": "standard",
        "something_new": {"a": 1},
    }
    status, reply = call(served, "POST", "/upload_app/0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90", older)
    assert status == 502 and "cannot reach the FL server" in reply["detail"]  # past every check, to the FL server


def test_query_strings_of_list_jobs_are_checked(service):
    served, _ = service
    long = urllib.parse.quote("x" * 200)
    assert call(served, "GET", f"/list_jobs?id_prefix={long}")[0] == 422
