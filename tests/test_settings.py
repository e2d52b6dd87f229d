"""Agent settings validation and persistence (convocate_agent.settings)."""

import json

import pytest

from convocate.common.errors import BadRequest, ConfigError
from convocate_agent.settings import Settings, load_settings, save_settings


def test_defaults_when_the_file_is_missing(tmp_path):
    assert load_settings(tmp_path / "settings.json") == Settings()


def test_partial_update_round_trips_through_the_file(tmp_path):
    path = tmp_path / "settings.json"
    s = Settings().updated({"default_cpus": 2, "agent_command": "claude --verbose"})
    save_settings(path, s)
    assert load_settings(path) == s and isinstance(s.default_cpus, float)


@pytest.mark.parametrize("changes, fragment", [
    ({"nope": 1}, 'unknown field "nope"'),
    ({"default_cpus": "1"}, "must be a number"),
    ({"default_cpus": 0}, "out of range"),
    ({"default_memory_mb": 1.5}, "must be an integer"),
    ({"heartbeat_interval_s": 0}, "out of range"),
    ({"agent_command": ""}, "must not be empty"),
    ({"agent_command": "a\nb"}, "one line"),
    ({"image_prune": "sometimes"}, "must be one of"),
    ({"trash_retention_days": True}, "must be an integer"),
    ({"pids_limit": 10}, "out of range"),
])
def test_invalid_updates_name_the_field(changes, fragment):
    with pytest.raises(BadRequest) as e:
        Settings().updated(changes)
    assert e.value.message.startswith("decode params: ") and fragment in e.value.message


def test_an_invalid_file_is_a_clear_config_error(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"default_memory_mb": -5}))
    with pytest.raises(ConfigError, match=r"settings.json: field \"default_memory_mb\""):
        load_settings(path)
    path.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_settings(path)
