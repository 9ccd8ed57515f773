"""Settings: profiles, the precedence of sources, and errors that name what was wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from bridge_actors._errors import InvalidSettings
from bridge_actors._settings import PROFILES, Settings, load_settings

SEED_FIELDS = (
    "max_connections_per_session",
    "max_connections_per_minute",
    "max_memory_mb",
    "service_idle_timeout",
    "connection_cleanup_interval",
    "memory_check_interval",
    "log_level",
)

# The published table, written out again so that a typo in PROFILES cannot hide.
PROFILE_TABLE = {
    "development": (3, 20, 512, 60, 30, 30, "DEBUG"),
    "staging": (10, 20, 2048, 300, 30, 30, "INFO"),
    "production": (15, 50, 4096, 600, 60, 30, "WARNING"),
    "memory-optimized": (5, 20, 1024, 180, 30, 15, "INFO"),
    "high-concurrency": (25, 100, 8192, 900, 30, 30, "INFO"),
    "low-latency": (10, 20, 2048, 60, 10, 10, "INFO"),
}
DEFAULT_SEEDS = (10, 20, 2048, 300, 30, 30, "INFO")


def seeds(settings: Settings) -> tuple[Any, ...]:
    return tuple(getattr(settings, field) for field in SEED_FIELDS)


def write_config(directory: Path, kind: str, values: dict[str, Any]) -> Path:
    """A real config file; TOML written by hand since the stdlib only reads it."""
    path = directory / f"bridge.{kind}"
    if kind == "json":
        path.write_text(json.dumps(values))
        return path
    lines, tables = [], []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append(f"[{key}]")
            tables += [f"{name} = {json.dumps(item)}" for name, item in value.items()]
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines + tables) + "\n")
    return path


def problems(exc_info: pytest.ExceptionInfo[InvalidSettings]) -> list[str]:
    return str(exc_info.value).splitlines()


# --- profiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROFILE_TABLE))
def test_each_profile_seeds_its_published_values(name: str) -> None:
    settings = load_settings(env={"BRIDGE_PROFILE": name})
    assert settings.profile == name
    assert seeds(settings) == PROFILE_TABLE[name]


def test_profiles_mapping_lists_exactly_the_published_profiles() -> None:
    assert set(PROFILES) == set(PROFILE_TABLE)
    for name, values in PROFILES.items():
        assert tuple(values[field] for field in SEED_FIELDS) == PROFILE_TABLE[name]


def test_without_a_profile_the_default_seeds_apply() -> None:
    settings = load_settings(env={})
    assert settings.profile is None
    assert seeds(settings) == DEFAULT_SEEDS
    assert seeds(Settings()) == DEFAULT_SEEDS


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(InvalidSettings) as exc_info:
        load_settings(env={"BRIDGE_PROFILE": "turbo"})
    [line] = problems(exc_info)
    assert line.startswith("BRIDGE_PROFILE: 'turbo'")
    for name in PROFILE_TABLE:
        assert name in line


def test_profile_from_override_beats_environment_beats_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "toml", {"profile": "development"})
    assert load_settings(env={}, config_file=path).profile == "development"
    env = {"BRIDGE_PROFILE": "production"}
    assert load_settings(env=env, config_file=path).profile == "production"
    overrides = {"profile": "low-latency"}
    settings = load_settings(env=env, config_file=path, overrides=overrides)
    assert settings.profile == "low-latency"
    assert seeds(settings) == PROFILE_TABLE["low-latency"]


# --- precedence -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["toml", "json"])
def test_each_source_overrides_the_ones_before_it(tmp_path: Path, kind: str) -> None:
    path = write_config(
        tmp_path,
        kind,
        {
            "profile": "production",
            "max_connections_per_minute": 70,  # file beats profile (50)
            "jpeg_quality": 60,  # only the file sets it
            "fps": 15,  # environment beats file
            "port": 9000,  # overrides beat environment and file
        },
    )
    env = {"BRIDGE_FPS": "24", "BRIDGE_PORT": "9001", "LOG_LEVEL": "error"}
    settings = load_settings(
        env=env, config_file=path, overrides={"port": 9002, "fps": None, "host": None}
    )
    assert settings.max_memory_mb == 4096  # from the profile, nobody overrode it
    assert settings.max_connections_per_session == 15
    assert settings.max_connections_per_minute == 70
    assert settings.jpeg_quality == 60
    assert settings.fps == 24  # a None override means "not given"
    assert settings.log_level == "ERROR"  # environment beats profile (WARNING)
    assert settings.port == 9002
    assert settings.host == "127.0.0.1"  # built-in default


def test_config_path_comes_from_bridge_config_when_not_given(tmp_path: Path) -> None:
    path = write_config(tmp_path, "json", {"fps": 12})
    assert load_settings(env={"BRIDGE_CONFIG": str(path)}).fps == 12
    other = write_config(tmp_path, "toml", {"fps": 7})
    assert load_settings(env={"BRIDGE_CONFIG": str(path)}, config_file=other).fps == 7


def test_config_keys_may_be_environment_names_in_any_case(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, "toml", {"MAX_MEMORY_MB": 512, "bridge_port": 8123, "Bridge_Backend": "media"}
    )
    settings = load_settings(env={}, config_file=path)
    assert (settings.max_memory_mb, settings.port, settings.backends) == (512, 8123, ("media",))


def test_env_none_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_CONNECTIONS_PER_MINUTE", "33")
    monkeypatch.setenv("BRIDGE_MAX_CONNECTIONS", "44")
    settings = load_settings()
    assert (settings.max_connections_per_minute, settings.max_connections) == (33, 44)


def test_empty_environment_variables_count_as_unset() -> None:
    settings = load_settings(env={"BRIDGE_PORT": "", "BRIDGE_PROFILE": "", "LOG_LEVEL": ""})
    assert (settings.port, settings.profile, settings.log_level) == (8000, None, "INFO")


def test_log_level_is_case_insensitive() -> None:
    assert load_settings(env={"LOG_LEVEL": " warning"}).log_level == "WARNING"
    assert Settings(log_level="debug").log_level == "DEBUG"


def test_state_dir_follows_xdg_state_home_at_load_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    xdg = tmp_path / "xdg"
    assert load_settings(env={"XDG_STATE_HOME": str(xdg)}).state_dir == xdg / "bridge_actors"
    expected_home = tmp_path / "home" / ".local" / "state" / "bridge_actors"
    assert load_settings(env={}).state_dir == expected_home
    assert load_settings(env={"XDG_STATE_HOME": "relative"}).state_dir == expected_home
    explicit = load_settings(env={"XDG_STATE_HOME": str(xdg), "BRIDGE_STATE_DIR": "~/s"})
    assert explicit.state_dir == tmp_path / "home" / "s"


# --- keyword construction -------------------------------------------------------------------


def test_keyword_construction_ignores_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_CONNECTIONS_PER_MINUTE", "99")
    monkeypatch.setenv("MAX_CONNECTIONS_PER_SESSION", "1")
    monkeypatch.setenv("BRIDGE_PORT", "1")
    monkeypatch.setenv("BRIDGE_PROFILE", "development")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    settings = Settings(max_connections_per_minute=5)
    assert settings.max_connections_per_minute == 5
    assert settings.max_connections_per_session == 10
    assert settings.port == 8000
    assert settings.profile is None
    assert tmp_path not in settings.state_dir.parents


def test_settings_are_frozen_and_reject_unknown_fields() -> None:
    settings = Settings()
    with pytest.raises(pydantic.ValidationError):
        settings.port = 1  # type: ignore[misc]
    with pytest.raises(InvalidSettings, match=r"^prot: not a setting$"):
        Settings(prot=1)  # type: ignore[call-arg]


def test_keyword_construction_with_a_bad_value_names_the_field() -> None:
    with pytest.raises(InvalidSettings) as exc_info:
        Settings(port=-1, viewer_slot_size=3)
    assert problems(exc_info) == [
        "viewer_slot_size: 3 is not valid; expected an integer from 1 to 2",
        "port: -1 is not valid; expected an integer from 0 to 65535",
    ]


# --- bad values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("MAX_CONNECTIONS_PER_MINUTE", "0", "an integer >= 1"),
        ("MAX_CONNECTIONS_PER_SESSION", "many", "an integer >= 1"),
        ("MAX_MEMORY_MB", "32", "an integer >= 64"),
        ("SERVICE_IDLE_TIMEOUT", "-1", "a finite number >= 0"),
        ("CONNECTION_CLEANUP_INTERVAL", "0", "a finite number > 0"),
        ("LOG_LEVEL", "loud", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("BRIDGE_PORT", "70000", "an integer from 0 to 65535"),
        ("BRIDGE_FPS", "2.5", "an integer from 1 to 120"),
        ("BRIDGE_RESTART_PERIOD", "inf", "a finite number > 0"),
        ("BRIDGE_MAX_MESSAGE_BYTES", "10", "an integer >= 1024"),
        ("BRIDGE_ACCESS_LOG", "maybe", "true or false"),
        ("BRIDGE_LOG_FORMAT", "xml", "one of plain, json"),
    ],
)
def test_bad_environment_value_names_variable_value_and_range(
    variable: str, value: str, accepted: str
) -> None:
    with pytest.raises(InvalidSettings) as exc_info:
        load_settings(env={variable: value})
    assert problems(exc_info) == [f"{variable}: {value!r} is not valid; expected {accepted}"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_config(tmp_path, "toml", {"max_connections_per_minute": 0, "portt": 1})
    with pytest.raises(InvalidSettings) as exc_info:
        load_settings(
            env={"MAX_MEMORY_MB": "1", "BRIDGE_JPEG_QUALITY": "101"},
            config_file=path,
            overrides={"port": 65536},
        )
    lines = problems(exc_info)
    assert len(lines) == 5
    assert lines[0] == f"portt in {path}: unknown setting; did you mean 'port'?"
    assert f"max_connections_per_minute in {path}: 0 is not valid" in lines[1]
    assert lines[2].startswith("MAX_MEMORY_MB: '1' is not valid")
    assert lines[3].startswith("BRIDGE_JPEG_QUALITY: '101' is not valid")
    assert lines[4] == "--port: 65536 is not valid; expected an integer from 0 to 65535"


def test_backoff_max_below_initial_is_refused() -> None:
    with pytest.raises(InvalidSettings) as exc_info:
        load_settings(
            env={"BRIDGE_RESTART_BACKOFF_INITIAL": "2", "BRIDGE_RESTART_BACKOFF_MAX": "1"}
        )
    [line] = problems(exc_info)
    assert line == (
        "BRIDGE_RESTART_BACKOFF_MAX: '1' is not valid; must be >= restart_backoff_initial (2.0)"
    )
    with pytest.raises(InvalidSettings, match=r"^restart_backoff_max \(default\): 5.0"):
        load_settings(env={"BRIDGE_RESTART_BACKOFF_INITIAL": "10"})


def test_unknown_override_is_refused() -> None:
    with pytest.raises(InvalidSettings, match=r"^override 'colour' is not a setting$"):
        load_settings(env={}, overrides={"colour": "blue"})


# --- config files ---------------------------------------------------------------------------


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, "json", {"fps": 10, "frobnicate": True})
    with pytest.raises(InvalidSettings) as exc_info:
        load_settings(env={}, config_file=path)
    assert problems(exc_info) == [f"frobnicate in {path}: unknown setting"]


def test_a_setting_given_twice_in_one_file_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, "json", {"port": 1, "BRIDGE_PORT": 2})
    with pytest.raises(InvalidSettings, match="given twice"):
        load_settings(env={}, config_file=path)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bridge.toml", "fps = = 3\n", "not valid TOML"),
        ("bridge.json", '{"fps": 3,', "not valid JSON"),
        ("bridge.json", "[1, 2]", "expected a table of settings"),
        ("bridge.toml", b"fps = 3\n\xff\xfe", "not valid TOML"),
        ("bridge.yaml", "fps: 3\n", "expected a .toml or .json file"),
    ],
)
def test_corrupt_config_file_is_reported(
    tmp_path: Path, name: str, content: str | bytes, expected: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(InvalidSettings) as exc_info:
        load_settings(env={}, config_file=path)
    [line] = problems(exc_info)
    assert line.startswith(f"config file {path}: ")
    assert expected in line


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(InvalidSettings, match=r"cannot be read: No such file"):
        load_settings(env={"BRIDGE_CONFIG": str(path)})


# --- backends and media sources -------------------------------------------------------------


def test_bridge_backend_is_a_comma_separated_list() -> None:
    settings = load_settings(env={"BRIDGE_BACKEND": "simulated, media,IOS,media"})
    assert settings.backends == ("simulated", "media", "ios")
    assert load_settings(env={}).backends == ("simulated",)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("simulated,android", "unknown backend 'android' (known: simulated, media, ios)"),
        (" , ", "at least one backend is required (known: simulated, media, ios)"),
    ],
)
def test_bridge_backend_rejects_unknown_and_empty(value: str, reason: str) -> None:
    with pytest.raises(InvalidSettings) as exc_info:
        load_settings(env={"BRIDGE_BACKEND": value})
    assert problems(exc_info) == [f"BRIDGE_BACKEND: {value!r} is not valid; {reason}"]


def test_bridge_media_parses_name_source_pairs() -> None:
    env = {"BRIDGE_MEDIA": "cam=rtsp://host/live?user=a&x=1, clip = /videos/a.mp4,"}
    settings = load_settings(env=env)
    assert settings.media_sources == {
        "cam": "rtsp://host/live?user=a&x=1",
        "clip": "/videos/a.mp4",
    }


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("cam", "'cam' is not of the form name=source"),
        ("cam=a,cam=b", "media source 'cam' is given twice"),
        ("cam=", "media source 'cam' needs a non-empty source"),
        ("my cam=x", "media source name 'my cam' must be letters, digits, '.', '_' or '-'"),
    ],
)
def test_bridge_media_rejects_malformed_pairs(value: str, reason: str) -> None:
    with pytest.raises(InvalidSettings) as exc_info:
        load_settings(env={"BRIDGE_MEDIA": value})
    assert problems(exc_info) == [f"BRIDGE_MEDIA: {value!r} is not valid; {reason}"]


@pytest.mark.parametrize("kind", ["toml", "json"])
def test_media_sources_in_a_config_file_are_a_table(tmp_path: Path, kind: str) -> None:
    media = {"cam": "rtsp://host/live", "clip": "/videos/a.mp4"}
    path = write_config(tmp_path, kind, {"media_sources": media, "backends": ["media"]})
    settings = load_settings(env={}, config_file=path)
    assert settings.media_sources == media
    assert settings.backends == ("media",)


# --- describe -------------------------------------------------------------------------------


def test_describe_is_json_safe_and_masks_passwords(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        backends=("simulated", "media"),
        media_sources={"cam": "rtsp://admin:secret@10.0.0.5/live", "clip": "/v/a.mp4"},
    )
    described = json.loads(json.dumps(settings.describe()))
    assert described["state_dir"] == str(tmp_path)
    assert described["backends"] == ["simulated", "media"]
    assert described["media_sources"] == {
        "cam": "rtsp://admin:***@10.0.0.5/live",
        "clip": "/v/a.mp4",
    }
    assert described["max_connections_per_minute"] == 20
    assert set(described) == set(Settings.model_fields)
    assert "secret" not in json.dumps(described)
