from django.core.management import call_command


def test_schema_generates_without_warnings(tmp_path):
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(out))
    text = out.read_text()
    assert "/api/v1/execute/async/{target}" in text
    assert "ApiKey" in text


def test_operations_are_grouped_by_resource_in_a_newcomers_order(tmp_path):
    """Every operation sat under one "v1" tag, named `v1_did_register_create`, the unsupported DID call first."""
    import yaml

    out = tmp_path / "schema.yml"
    call_command("spectacular", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    operations = [op for path in schema["paths"].values() for op in path.values() if isinstance(op, dict)]
    used = {op["tags"][0] for op in operations}
    declared = [tag["name"] for tag in schema["tags"]]
    assert declared[:3] == ["execute", "executions", "nodes"] and used <= set(declared)
    assert not any(op["operationId"].startswith("v1_") for op in operations)
