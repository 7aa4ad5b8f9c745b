import pytest
from pydantic import ValidationError

from services.config import GatewaySettings, SchedulerSettings, WorkerSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in list(__import__("os").environ):
        if key.startswith("FERRUM_INFER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults():
    s = GatewaySettings()
    assert (s.host, s.port, s.scheduler_addr, s.accepted_keys()) == ("0.0.0.0", 8080, "127.0.0.1:50051", [])


def test_environment_overrides_toml_and_flags_override_environment(monkeypatch, tmp_path):
    (tmp_path / "config.toml").write_text('[server]\nport = 9000\nhost = "127.0.0.1"\n[cache]\ncache_size_mb = 64\n')
    assert GatewaySettings().port == 9000
    monkeypatch.setenv("FERRUM_INFER_PORT", "9100")
    s = GatewaySettings()
    assert (s.port, s.host) == (9100, "127.0.0.1")
    assert GatewaySettings(port=9200).port == 9200
    assert WorkerSettings().cache_size_mb == 64


def test_explicit_config_path_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("FERRUM_INFER_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        GatewaySettings()


def test_invalid_values_are_reported_by_name(monkeypatch):
    monkeypatch.setenv("FERRUM_INFER_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="port"):
        GatewaySettings()
    monkeypatch.delenv("FERRUM_INFER_PORT")
    monkeypatch.setenv("FERRUM_INFER_EVICTION_POLICY", "random")
    with pytest.raises(ValidationError, match="eviction_policy"):
        WorkerSettings()


def test_api_keys_and_served_name(monkeypatch):
    monkeypatch.setenv("FERRUM_INFER_API_KEY", "k1")
    monkeypatch.setenv("FERRUM_INFER_API_KEYS", "k2, k3,")
    s = GatewaySettings()
    assert s.accepted_keys() == ["k1", "k2", "k3"]
    assert "k1" not in repr(s)  # secrets never show in logs or reprs
    assert WorkerSettings(model_path="/models/my-model/").served_model_name() == "my-model"
    assert WorkerSettings(model_path="Qwen/Qwen2-0.5B").served_model_name() == "Qwen2-0.5B"
    assert WorkerSettings(model_path="x", model_name="alias").served_model_name() == "alias"


def test_log_level_is_case_insensitive(monkeypatch):
    monkeypatch.setenv("FERRUM_INFER_LOG_LEVEL", "debug")
    assert SchedulerSettings().log_level == "DEBUG"
