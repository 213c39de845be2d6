from __future__ import annotations

from clip_service.errors import InvalidInput, normalize_error_body


def test_bentoml_invalid_argument_list_is_unwrapped():
    assert normalize_error_body([{"error": "x: bad"}]) == {"error": "x: bad"}


def test_validation_error_names_the_field():
    body = {
        "error": "1 validation error for X",
        "detail": [{"loc": ["root", 2, "text"], "msg": "Field required", "type": "missing"}],
    }
    assert normalize_error_body(body) == {"error": "body[2].text: Field required"}
    body["detail"][0]["loc"] = ["queries", 0, "img_blob"]
    assert normalize_error_body(body)["error"] == "queries[0].img_blob: Field required"


def test_several_validation_errors_are_all_named_up_to_five():
    detail = [{"loc": ["labels", i], "msg": "too long"} for i in range(7)]
    message = normalize_error_body({"error": "7 validation errors", "detail": detail})["error"]
    assert message.startswith("labels[0]: too long; labels[1]: too long;")
    assert message.endswith("labels[4]: too long; and 2 more")


def test_other_bodies_become_the_shape():
    assert normalize_error_body("plain text") == {"error": "plain text"}
    assert normalize_error_body({"detail": "Not Found"}) == {"error": "Not Found"}  # FastAPI's
    assert normalize_error_body({"detail": ["x"]}) == {"error": "{'detail': ['x']}"}


def test_invalid_input_message_and_status():
    exc = InvalidInput("items[0].img_blob", "not valid base64")
    assert str(exc) == "items[0].img_blob: not valid base64"
    assert exc.status == 400
