import pytest

from clm.runtime.settings import NodeAgentSettings, ServiceSettings, SettingsError, load_settings


def test_defaults_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(ServiceSettings)
    assert settings.nats_servers == ["nats://127.0.0.1:4222"]
    assert settings.max_deliver == 5


def test_environment_is_read_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLM_NATS_URL", "nats://a:4222, nats://b:4222")
    monkeypatch.setenv("CLM_REDELIVERY_BACKOFF_SECONDS", "[0.5, 2]")
    monkeypatch.setenv("CLM_LOG_LEVEL", "debug")
    settings = load_settings(ServiceSettings)
    assert settings.nats_servers == ["nats://a:4222", "nats://b:4222"]
    assert settings.redelivery_backoff_seconds == [0.5, 2.0]
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("CLM_HTTP_PORT", "eighty", "CLM_HTTP_PORT: Input should be a valid integer"),
        ("CLM_HTTP_PORT", "70000", "CLM_HTTP_PORT: Input should be less than or equal to 65535"),
        ("CLM_MAX_DELIVER", "0", "CLM_MAX_DELIVER"),
        ("CLM_REDELIVERY_BACKOFF_SECONDS", "[0]", "positive seconds"),
        ("CLM_LOG_LEVEL", "LOUD", "CLM_LOG_LEVEL"),
        ("CLM_NATS_CREDS_FILE", "/nonexistent/user.creds", "no such file '/nonexistent/user.creds'"),
        ("CLM_NATS_USER", "alice", "must be set together"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings(ServiceSettings)
    assert fragment in str(info.value)
    assert info.value.code == 2


def test_node_agents_need_a_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLM_NODE_NAME", raising=False)
    with pytest.raises(SettingsError, match="CLM_NODE_NAME: Field required"):
        load_settings(NodeAgentSettings)
    monkeypatch.setenv("CLM_NODE_NAME", "ip-10-0-1-2.ec2.internal")
    assert load_settings(NodeAgentSettings).node_name == "ip-10-0-1-2.ec2.internal"
