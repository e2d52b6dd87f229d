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


def _work_dirs(fragment: str, *values: str) -> list[tuple[dict, str]]:
    """Cases of a bad ``work_dir`` (one per value), each refused with ``fragment`` in the message."""
    return [({"work_dir": value}, fragment) for value in values]


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
    ({"skip_permissions": 1}, 'field "skip_permissions" must be a boolean'),
    ({"skip_permissions": "true"}, "must be a boolean"),
    ({"work_dir": 5}, 'field "work_dir" must be a string'),
    *_work_dirs("absolute, normalised path", "work", "/home/claude/work/", "/home/claude//work",
                "/home/claude/./work", "/home/claude/../etc", "/home/claude/a/.."),
    *_work_dirs("/home/claude or a directory below it", "//home/claude/work", "/home/claudette", "/etc"),
    *_work_dirs("NUL or other control characters", "/home/claude/a\x00b", "/home/claude/a\nb"),
    ({"work_dir": "/home/claude/\udc80"}, "valid UTF-8"),
    ({"work_dir": "/home/claude/" + "é" * 122}, "at most 255 bytes"),  # 13 + 244 bytes
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


@pytest.mark.parametrize("work_dir", ["/home/claude", "/home/claude/work", "/home/claude/projects/my site",
                                      "/home/claude/..hidden", "/home/claude/" + "é" * 121])
def test_work_dir_accepts_the_home_and_normalised_paths_below_it(work_dir):
    assert Settings().updated({"work_dir": work_dir}).work_dir == work_dir


def test_work_dir_and_skip_permissions_default_to_a_project_dir_and_todays_behaviour(tmp_path):
    assert (Settings().work_dir, Settings().skip_permissions) == ("/home/claude/work", False)
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"default_cpus": 1}))  # a file of an older agent: the new fields default
    assert load_settings(path).work_dir == "/home/claude/work"
    save_settings(path, Settings().updated({"work_dir": "/home/claude/src", "skip_permissions": True}))
    loaded = load_settings(path)
    assert (loaded.work_dir, loaded.skip_permissions) == ("/home/claude/src", True)
