"""Bad input gets a clear 4xx naming the field, never a 500, and the server keeps serving."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from shipyard.project import Dataset
from tests.support import fuzz
from tests.support.servers import KEY, InProcessServer, rows

pytestmark = pytest.mark.unit

AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
INFER = "/v2/models/digits-sklearn/infer"


def tensor(**overrides: object) -> dict:
    base = {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    return {"inputs": [{**base, **overrides}]}


CASES = [
    # (path, body bytes or JSON, headers, status, field)
    (INFER, b'{"inputs": [', AUTH, 400, "body"),
    (INFER, tensor(), {**AUTH, "Content-Type": "text/plain"}, 415, "content-type"),
    ("/v2/models/other-model/infer", tensor(), AUTH, 404, "model name"),
    (INFER, tensor(shape=[1, 63]), AUTH, 400, "inputs[0].shape"),
    (INFER, tensor(shape=[1, 64, 1]), AUTH, 400, "inputs[0].shape"),
    (INFER, tensor(datatype="INT64"), AUTH, 400, "inputs[0].datatype"),
    (INFER, tensor(name="image"), AUTH, 400, "inputs[0].name"),
    (INFER, tensor(data=[1e39] * 64), AUTH, 400, "inputs[0].data"),
    (INFER, tensor(data=["1"] * 64), AUTH, 400, "inputs[0].data"),
    (INFER, tensor(data=[0.0] * 60), AUTH, 400, "inputs[0].data"),
    (INFER, tensor(shape=[65, 64], data=[0.0] * 65 * 64), AUTH, 413, "inputs[0].shape"),
    (INFER, {"inputs": []}, AUTH, 400, "inputs"),
    (INFER, [1, 2], AUTH, 400, "body"),
    (INFER, {**tensor(), "outputs": [{"name": "logits"}]}, AUTH, 400, "outputs"),
    (INFER, {**tensor(), "outputs": [{"name": ["label"]}]}, AUTH, 400, "outputs"),
    (INFER, tensor(data=5), AUTH, 400, "inputs[0].data"),
    (INFER, tensor(), {"Content-Type": "application/json"}, 401, "authorization"),
    (INFER, tensor(), {**AUTH, "Authorization": "Bearer wrong"}, 401, "authorization"),
    ("/invocations", {"inputs": [[0] * 64, [0] * 63]}, AUTH, 400, "inputs"),
    ("/invocations", {"inputs": [[0] * 64], "instances": [[0] * 64]}, AUTH, 400, "body"),
    (
        "/invocations",
        {"dataframe_split": {"columns": ["a"], "data": [[0] * 64]}},
        AUTH,
        400,
        "dataframe_split.columns",
    ),
    ("/invocations", {"inputs": [[True] * 64]}, AUTH, 400, "inputs"),
    ("/invocations", {"dataframe_split": {"data": 5}}, AUTH, 400, "dataframe_split.data"),
    ("/invocations", {"inputs": 7}, AUTH, 400, "inputs"),
    ("/invocations", {"inputs": [[0] * 64] * 65}, AUTH, 413, "inputs"),
    ("/invocations", {"inputs": [[0.5] * 64] * 300}, AUTH, 413, "body"),  # about 96 KiB
    ("/v2/nothing", {}, AUTH, 404, "path"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "field"), CASES)
def test_bad_request_is_a_clear_4xx(
    server: InProcessServer, path: str, body: object, headers: dict, status: int, field: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = server.client.post(f"{path}", content=content, headers=headers)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["field"] == field
    assert error["error"] and error.get("expected")
    if status == 401:
        assert answer.headers["www-authenticate"] == "Bearer"


def test_wrong_method_is_405(server: InProcessServer) -> None:
    answer = server.client.get(f"{INFER}", headers=AUTH)
    assert answer.status_code == 405 and answer.json()["expected"] == "POST"


def test_keys_in_either_header_and_open_health(server: InProcessServer, digits: Dataset) -> None:
    body = {"inputs": rows(digits, 1)}
    assert (
        server.client.post("/invocations", json=body, headers={"X-API-Key": KEY}).status_code == 200
    )
    assert server.client.post("/invocations", json=body).status_code == 401
    for open_route in ("/v2/health/live", "/v2/health/ready", "/ping", "/metrics"):
        assert server.client.get(f"{open_route}").status_code == 200


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
FIELDS = st.sampled_from(["name", "shape", "datatype", "data"])


@seed(fuzz.SEED)
@settings(
    max_examples=fuzz.EXAMPLES,
    deadline=None,
    database=None,  # the printed seed alone decides the examples
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(junk=JSON, field=FIELDS, path=st.sampled_from([INFER, "/invocations"]))
def test_fuzzed_requests_never_get_a_500(
    server: InProcessServer, junk: object, field: str, path: str
) -> None:
    """Random JSON, whole or in one field of an otherwise valid tensor: always a 4xx."""
    for body in (
        junk,
        tensor(**{field: junk}),
        {"inputs": junk},
        {"dataframe_split": junk},
        {"dataframe_split": {"data": junk}},
        {**tensor(), "outputs": junk},
        {**tensor(), "outputs": [{"name": junk}]},
    ):
        answer = server.client.post(f"{path}", content=json.dumps(body), headers=AUTH)
        assert answer.status_code < 500, (body, answer.text)
        if answer.status_code >= 400:
            assert "error" in answer.json()


def test_valid_requests_still_succeed_after_the_bad_ones(
    server: InProcessServer, digits: Dataset
) -> None:
    answer = server.client.post("/invocations", json={"inputs": rows(digits, 4)}, headers=AUTH)
    assert answer.status_code == 200 and len(answer.json()["predictions"]["label"]) == 4
    assert server.client.get("/v2/health/ready").json() == {"ready": True}
