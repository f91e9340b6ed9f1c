"""ESD's users, roles and permissions, and listings filtered by the `username` query parameter.

ESD checks the `username` header against its user table and the route's permissions
(`middleware_api/libs/utils.py` `permissions_check`), and narrows `GET /endpoints` and
`GET /checkpoints` to the roles of the `username` *query* user for requestors that hold only the
`:list` permissions (`endpoints/list_endpoints.py`, `checkpoints/list_checkpoints.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloud.esd_server import ServerConfig
from cloud.esd_server.config import UserSpec
from tests.esd_server.esd_server_kit import CHECKPOINT, Api

if TYPE_CHECKING:
    from tests.esd_server.esd_server_kit import MakeApi


async def names(api: Api, path: str, key: str, **params: str) -> list[str]:
    reply = await api.call("GET", path, params=params)
    assert reply.status == 200, reply.body
    field = "endpoint_name" if key == "endpoints" else "name"
    return [row[field] if key == "endpoints" else row[field][0] for row in reply.data[key]]


async def test_a_list_only_user_sees_nothing_without_the_username_query(api: Api) -> None:
    api.user = "lister"
    assert await names(api, "endpoints", "endpoints") == []
    assert await names(api, "checkpoints", "checkpoints") == []
    # With the name of a user whose roles own them (the built-in administrator's), it sees them.
    assert "sd-async-local" in await names(api, "endpoints", "endpoints", username="api")
    assert CHECKPOINT in await names(api, "checkpoints", "checkpoints", username="api")
    # Its own roles own nothing here.
    assert await names(api, "endpoints", "endpoints", username="lister") == []
    assert await names(api, "checkpoints", "checkpoints", username="lister") == []


async def test_an_administrator_sees_everything_with_or_without_the_query(api: Api) -> None:
    assert "sd-async-local" in await names(api, "endpoints", "endpoints")
    assert CHECKPOINT in await names(api, "checkpoints", "checkpoints")
    assert CHECKPOINT in await names(api, "checkpoints", "checkpoints", username="lister")


async def test_resources_owned_by_the_users_roles_are_listed_to_it(make_api: MakeApi) -> None:
    config = ServerConfig(
        users=(UserSpec("api"), UserSpec("bot", ("lister",))), owner_roles=("IT Operator", "lister")
    )
    api = await make_api(config)
    api.user = "bot"
    assert "sd-async-local" in await names(api, "endpoints", "endpoints", username="bot")
    assert CHECKPOINT in await names(api, "checkpoints", "checkpoints", username="bot")
    row = (await api.call("GET", "checkpoints", params={"username": "bot"})).data["checkpoints"][0]
    assert row["allowed_roles_or_users"] == ["IT Operator", "lister"]


async def test_a_list_only_user_cannot_create_or_start_jobs(api: Api) -> None:
    job_id = (await api.create())["id"]
    api.user = "lister"
    body = {"task_type": "img2img", "inference_type": "Async", "models": api.models}
    reply = await api.call("POST", "inferences", json=body)
    assert reply.status == 403
    assert reply.body["message"] == (
        "User lister has no permissions: ['inference:all', 'inference:create']"
    )
    reply = await api.start(job_id)
    assert reply.status == 403
    assert reply.body["message"] == "User lister has no permissions: ['inference:all']"


async def test_unknown_users_are_401_and_unknown_query_users_400(api: Api) -> None:
    api.user = "nobody"
    assert (await api.call("GET", "endpoints")).status == 401
    api.user = "api"
    reply = await api.call("GET", "checkpoints", params={"username": "nobody"})
    assert reply.status == 400
    assert reply.body["message"] == 'user: "nobody" not exist'


async def test_checkpoint_created_is_a_string_like_esds_decimal_encoder(api: Api) -> None:
    # A DynamoDB number comes back as `Decimal`, which ESD's `DecimalEncoder` writes as a string.
    reply = await api.call("GET", "checkpoints")
    created = reply.data["checkpoints"][0]["created"]
    assert isinstance(created, str)
    assert float(created) > 0
