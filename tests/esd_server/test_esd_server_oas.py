"""`GET /prod/api`: the OpenAPI document, used the way ESD's own API tests use it.

ESD's `test/utils/api.py` looks up the model its document names for an operation and the
answer's status, and validates the answer's body against it. These tests do the same for the
answers of every served route, so a model that does not describe the server fails here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jsonschema

from tests.esd_server.esd_server_kit import img2img_payload

if TYPE_CHECKING:
    from tests.esd_server.esd_server_kit import Api, Reply


async def document(api: Api) -> dict[str, Any]:
    reply = await api.call("GET", "api", headers=api.headers(user=False))
    assert reply.status == 200
    assert "statusCode" not in reply.body  # ESD answers the document itself, not an envelope
    body: dict[str, Any] = reply.body
    return body


def check(doc: dict[str, Any], operation_id: str, reply: Reply) -> None:
    """ESD's `validate_response`: the model of `operation_id` for the status must exist and
    must validate the body."""
    operations = [op for methods in doc["paths"].values() for op in methods.values()]
    (operation,) = [op for op in operations if op["operationId"] == operation_id]
    response = operation["responses"][str(reply.status)]
    if reply.status == 204:
        return
    ref = response["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.split("/")[-1]]
    jsonschema.validate(reply.body, schema)


async def test_the_document_lists_the_served_routes_in_esds_shape(api: Api) -> None:
    doc = await document(api)
    assert doc["openapi"].startswith("3.0")
    assert doc["info"]["version"] == "1.7.0"
    assert list(doc["paths"]) == sorted(doc["paths"])
    operations = {op["operationId"] for methods in doc["paths"].values() for op in methods.values()}
    assert operations == {
        "Ping",
        "GetApiOAS",
        "CreateInferenceJob",
        "ListInferences",
        "DeleteInferenceJobs",
        "GetInferenceJob",
        "StartInferences",
        "ListEndpoints",
        "ListCheckpoints",
    }
    reply = await api.call("GET", "api", headers={})
    assert reply.status == 403  # the document needs the API key, as on API Gateway


async def test_every_answer_validates_against_its_model(api: Api) -> None:
    doc = await document(api)
    check(doc, "Ping", await api.call("GET", "ping"))
    check(doc, "Ping", await api.call("GET", "ping", headers={}))
    check(doc, "ListEndpoints", await api.call("GET", "endpoints"))
    check(doc, "ListEndpoints", await api.call("GET", "endpoints", headers=api.headers(user=False)))
    bad_user = await api.call("GET", "endpoints", params={"username": "nobody"})
    check(doc, "ListEndpoints", bad_user)
    check(doc, "ListCheckpoints", await api.call("GET", "checkpoints"))
    check(doc, "ListInferences", await api.call("GET", "inferences", params={"type": "img2img"}))
    created = await api.call(
        "POST",
        "inferences",
        json={"task_type": "img2img", "inference_type": "Async", "models": api.models},
    )
    check(doc, "CreateInferenceJob", created)
    check(doc, "CreateInferenceJob", await api.call("POST", "inferences", json={"bad": 1}))
    inference = created.data["inference"]
    check(doc, "GetInferenceJob", await api.call("GET", f"inferences/{inference['id']}"))
    check(doc, "GetInferenceJob", await api.call("GET", "inferences/nope"))
    await api.upload(inference, img2img_payload())
    check(doc, "StartInferences", await api.start(inference["id"]))
    check(doc, "StartInferences", await api.start("nope"))
    await api.state.finish(inference["id"])
    check(doc, "GetInferenceJob", await api.call("GET", f"inferences/{inference['id']}"))
    check(
        doc,
        "ListInferences",
        await api.call("GET", "inferences", params={"type": "img2img", "username": "api"}),
    )
    deleted = await api.call("DELETE", "inferences", json={"inference_id_list": ["nope"]})
    check(doc, "DeleteInferenceJobs", deleted)
