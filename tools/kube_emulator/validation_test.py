from tools.kube_emulator.validation import prune, validate_custom_resource

SCHEMA = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["pod"],
            "properties": {
                "pod": {"type": "string", "minLength": 1, "maxLength": 10, "pattern": "^[a-z0-9-]+$"},
                "strategy": {"type": "string", "enum": ["auto", "post-copy"]},
                "rounds": {"type": "integer", "minimum": 1, "maximum": 5},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "list": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
    },
}


def errors(spec) -> list[str]:
    return [str(e) for e in validate_custom_resource({"spec": spec}, SCHEMA)]


def test_valid_object_has_no_errors() -> None:
    assert errors({"pod": "a", "strategy": "auto", "rounds": 2, "labels": {"x": "y"}, "list": [1]}) == []


def test_messages_name_the_field() -> None:
    assert errors({}) == ["spec.pod: Required value"]
    assert errors({"pod": "a", "strategy": "fast"}) == [
        'spec.strategy: Unsupported value: "fast": supported values: "auto", "post-copy"'
    ]
    assert errors({"pod": "a", "rounds": 0}) == [
        "spec.rounds: Invalid value: 0: spec.rounds in body should be greater than or equal to 1"
    ]
    assert errors({"pod": "a", "rounds": "two"}) == [
        'spec.rounds: Invalid value: "string": spec.rounds in body must be of type integer: "string"'
    ]
    assert errors({"pod": "Bad_Name"}) == [
        "spec.pod: Invalid value: \"Bad_Name\": spec.pod in body should match '^[a-z0-9-]+$'"
    ]
    assert errors({"pod": "x" * 11}) == ["spec.pod: Too long: may not be more than 10 bytes"]
    assert errors({"pod": "a", "list": [1, "b"]})[0].startswith("spec.list[1]: Invalid value")
    assert [str(e) for e in validate_custom_resource({}, SCHEMA)] == ["spec: Required value"]


def test_unknown_fields_are_pruned_unless_preserved() -> None:
    obj = {"spec": {"pod": "a", "colour": "red", "free": {"any": {"thing": 1}}}, "status": {"x": 1}}
    assert prune(obj, SCHEMA) == {"spec": {"pod": "a", "free": {"any": {"thing": 1}}}, "status": {}}
