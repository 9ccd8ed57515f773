"""The bridge's configuration: one frozen :class:`Settings`, loaded from layered sources.

Values come from five layers, later ones winning: built-in defaults, a named
profile, a config file (TOML or JSON), the environment, and explicit overrides
(the CLI flags). :func:`load_settings` merges the layers while remembering where
each value came from, then validates the result once, so that a bad value is
reported under the name the user actually wrote (``MAX_MEMORY_MB``,
``port in /etc/bridge.toml``, ``--port``) and every problem is reported at once
rather than one per restart.

Constructing :class:`Settings` by keyword reads nothing from the environment:
an embedding application or a test gets exactly the values it passed.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
import types
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import annotated_types
import pydantic
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from ._checks import MAX_FPS, parse_networks
from ._errors import InvalidSettings

__all__ = ["BACKENDS", "ENV_NAMES", "PROFILES", "Settings", "load_settings"]

BACKENDS = ("simulated", "media", "ios")

# The seed values of the original deployment, used when no profile is chosen.
_DEFAULT_SEEDS: Mapping[str, Any] = types.MappingProxyType(
    {
        "max_connections_per_session": 10,
        "max_connections_per_minute": 20,
        "max_memory_mb": 2048,
        "service_idle_timeout": 300.0,
        "connection_cleanup_interval": 30.0,
        "memory_check_interval": 30.0,
        "log_level": "INFO",
    }
)


def _profile(
    per_session: int,
    per_minute: int,
    memory_mb: int,
    idle: float,
    cleanup: float,
    memory_check: float,
    log_level: str,
) -> Mapping[str, Any]:
    return types.MappingProxyType(
        {
            "max_connections_per_session": per_session,
            "max_connections_per_minute": per_minute,
            "max_memory_mb": memory_mb,
            "service_idle_timeout": idle,
            "connection_cleanup_interval": cleanup,
            "memory_check_interval": memory_check,
            "log_level": log_level,
        }
    )


PROFILES: Mapping[str, Mapping[str, Any]] = types.MappingProxyType(
    {
        "development": _profile(3, 20, 512, 60.0, 30.0, 30.0, "DEBUG"),
        "staging": _profile(10, 20, 2048, 300.0, 30.0, 30.0, "INFO"),
        "production": _profile(15, 50, 4096, 600.0, 60.0, 30.0, "WARNING"),
        "memory-optimized": _profile(5, 20, 1024, 180.0, 30.0, 15.0, "INFO"),
        "high-concurrency": _profile(25, 100, 8192, 900.0, 30.0, 30.0, "INFO"),
        "low-latency": _profile(10, 20, 2048, 60.0, 10.0, 10.0, "INFO"),
    }
)

_MEDIA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where sessions are persisted when ``state_dir`` is not given (XDG base directory spec)."""
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_STATE_HOME", "")
    # The spec says a relative XDG_STATE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "bridge_actors"


def _default_state_dir_without_environment() -> Path:
    # Keyword construction must not depend on the environment (beyond the home directory).
    return _default_state_dir({})


class Settings(pydantic.BaseModel):
    """Every tunable of the bridge, validated and immutable.

    Build it with :func:`load_settings` to honour profiles, config files and the
    environment; build it by keyword (``Settings(max_connections_per_minute=5)``)
    to get exactly the values given and defaults (the default profile) for the rest.
    ``profile`` only records which profile seeded the values; it applies nothing.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    profile: str | None = pydantic.Field(None, description="named profile: " + ", ".join(PROFILES))

    # Seed settings; their environment names carry no prefix, for compatibility.
    max_connections_per_session: int = pydantic.Field(
        _DEFAULT_SEEDS["max_connections_per_session"],
        ge=1,
        description="open connections one session may have",
    )
    max_connections_per_minute: int = pydantic.Field(
        _DEFAULT_SEEDS["max_connections_per_minute"],
        ge=1,
        description="connection attempts per session and client address per minute",
    )
    connection_cleanup_interval: float = pydantic.Field(
        _DEFAULT_SEEDS["connection_cleanup_interval"],
        gt=0,
        description="seconds between sweeps of empty rate-limit buckets",
    )
    max_memory_mb: int = pydantic.Field(
        _DEFAULT_SEEDS["max_memory_mb"],
        ge=64,
        description="memory mark in MB: at 80% idle captures stop, at 100% new ones are refused",
    )
    service_idle_timeout: float = pydantic.Field(
        _DEFAULT_SEEDS["service_idle_timeout"],
        ge=0,
        description="seconds a capture with no viewers lives on before it stops",
    )
    memory_check_interval: float = pydantic.Field(
        _DEFAULT_SEEDS["memory_check_interval"],
        gt=0,
        description="seconds between memory samples",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = pydantic.Field(
        _DEFAULT_SEEDS["log_level"], description="log level"
    )

    # Ours; environment names are BRIDGE_<FIELD> unless listed in _ENV_NAME_EXCEPTIONS.
    max_connections: int = pydantic.Field(
        2000, ge=1, description="open connections the whole bridge may have"
    )
    max_rate_limit_buckets: int = pydantic.Field(
        10000, ge=16, description="rate-limit buckets kept; the least recently used go first"
    )
    viewer_deadline: float = pydantic.Field(
        5.0, gt=0, description="seconds a viewer may stay behind before it is evicted"
    )
    viewer_slot_size: int = pydantic.Field(
        2, ge=1, le=2, description="frames waiting per viewer before the oldest is dropped"
    )
    fps: int = pydantic.Field(30, ge=1, le=MAX_FPS, description="capture frames per second")
    jpeg_quality: int = pydantic.Field(80, ge=1, le=100, description="JPEG quality of frames")
    encode_threads: int = pydantic.Field(
        2, ge=1, le=64, description="worker threads rendering and encoding frames"
    )
    restart_max: int = pydantic.Field(
        5, ge=0, description="restarts of a crashing capture allowed within the restart period"
    )
    restart_period: float = pydantic.Field(
        30.0, gt=0, description="seconds over which capture restarts are counted"
    )
    restart_backoff_initial: float = pydantic.Field(
        0.1, ge=0, description="seconds before the first restart of a crashed capture"
    )
    restart_backoff_max: float = pydantic.Field(
        5.0,
        validate_default=True,
        description="longest wait between restarts (the wait doubles each time)",
    )
    state_dir: Path = pydantic.Field(
        default_factory=_default_state_dir_without_environment,
        description="where sessions are kept across restarts",
    )
    backends: tuple[str, ...] = pydantic.Field(
        ("simulated",),
        description="device backends to enable, repeatable or comma-separated: "
        "simulated, media, ios",
    )
    media_sources: dict[str, str] = pydantic.Field(
        default_factory=dict,
        description="a source for the media backend, NAME=SOURCE (a file, a URL, or an "
        "FFmpeg input such as x11grab::0.0); repeatable",
    )
    host: str = pydantic.Field("127.0.0.1", description="address to listen on")
    port: int = pydantic.Field(
        8000, ge=0, le=65535, description="port to listen on; 0 picks a free one"
    )
    shutdown_grace: float = pydantic.Field(
        5.0, gt=0, description="seconds a shutdown may take, stalled clients included"
    )
    log_format: Literal["plain", "json"] = pydantic.Field(
        "plain", description="plain lines or JSON lines"
    )
    access_log: bool = pydantic.Field(False, description="log every HTTP request")
    create_sessions_per_minute: int = pydantic.Field(
        10, ge=1, description="sessions one client address may create per minute"
    )
    initial_session: bool = pydantic.Field(
        True, description="create one simulated session at start when there is none"
    )
    max_message_bytes: int = pydantic.Field(
        65536, ge=1024, description="largest WebSocket message a client may send"
    )
    max_body_bytes: int = pydantic.Field(1048576, ge=1024, description="largest HTTP request body")
    trusted_proxies: tuple[str, ...] = pydantic.Field(
        (),
        description="addresses or networks of reverse proxies whose X-Forwarded-For and "
        "X-Real-IP name the client; comma-separated (default none: those headers are ignored)",
    )
    keep_alive_timeout: float = pydantic.Field(
        5.0, gt=0, description="seconds an idle HTTP keep-alive connection stays open"
    )
    header_timeout: float = pydantic.Field(
        10.0, gt=0, description="seconds a client may take to send a request's headers"
    )
    body_timeout: float = pydantic.Field(
        10.0,
        gt=0,
        description="seconds a request body may pause before the request is refused with 408",
    )
    tcp_user_timeout: float = pydantic.Field(
        10.0,
        gt=0,
        description="seconds before the kernel drops a connection whose data goes unacknowledged",
    )
    # Device actions: uploads (apps, photos, videos, files) and how often a session may act
    upload_max_bytes: int = pydantic.Field(
        2 * 1024**3,
        ge=1024,
        description="largest upload (an app, photos, videos, a file), and largest unpacked app",
    )
    upload_max_entries: int = pydantic.Field(
        10000, ge=1, description="most entries an uploaded .ipa or .zip may hold"
    )
    upload_max_ratio: int = pydantic.Field(
        100,
        ge=1,
        description="most times an archive, or one of its entries, over 1 MiB may expand",
    )
    actions_per_minute: int = pydantic.Field(
        120,
        ge=1,
        description="device actions (install, open URL, location, push...) per session per minute",
    )

    # Authorization: who may watch and who may touch (tokens, share links, origins, audit).
    auth: Literal["none", "token"] | None = pydantic.Field(
        None,
        description="none or token (default: token when binding a non-loopback address, "
        "else none); none on a non-loopback address refuses to start",
    )
    allow_unauthenticated: bool = pydantic.Field(
        False, description="allow auth none on a non-loopback address (warns on every start)"
    )
    token_file: Path | None = pydantic.Field(
        None, description="TOML file of token hashes and roles, reloaded on SIGHUP"
    )
    link_signing_key: pydantic.SecretStr | None = pydantic.Field(
        None,
        description="key that signs share links (default: generated into the state "
        "directory, mode 0600)",
    )
    share_link_max_ttl: float = pydantic.Field(
        86400.0, gt=0, description="longest lifetime of a share link, in seconds"
    )
    server_names: tuple[str, ...] = pydantic.Field(
        (),
        description="Host header values accepted, comma-separated; a name without a port "
        "matches any port (default: the bind address, localhost, 127.0.0.1 and [::1])",
    )
    allowed_origins: tuple[str, ...] = pydantic.Field(
        (),
        description="page origins besides the server's own that may open WebSockets, make "
        "state-changing calls and get CORS answers; comma-separated (null and file:// only "
        "when listed)",
    )
    auth_failures_per_minute: int = pydantic.Field(
        10, ge=1, description="failed credential attempts per client address per minute"
    )
    create_sessions_per_minute_per_token: int = pydantic.Field(
        10, ge=1, description="sessions one token may create per minute"
    )
    control_messages_per_second: int = pydantic.Field(
        60, ge=1, description="control messages per second per connection"
    )
    audit: bool = pydantic.Field(True, description="write the audit log")
    audit_log: Path | None = pydantic.Field(
        None, description="audit log file (JSON lines; default audit.jsonl in the state directory)"
    )
    audit_log_max_bytes: int = pydantic.Field(
        10485760, ge=4096, description="size at which the audit log is rotated"
    )
    max_header_bytes: int = pydantic.Field(
        16384, ge=1024, description="largest request line and headers of an HTTP request"
    )
    audit_log_backups: int = pydantic.Field(5, ge=1, description="rotated audit log files kept")
    max_text_length: int = pydantic.Field(
        1000, ge=1, le=100000, description="longest text one control message may type"
    )
    max_concurrent_uploads: int = pydantic.Field(
        4, ge=1, description="uploads (apps, photos, videos, files) received at once, server-wide"
    )

    # H.264 video: one encoder per device for the H.264 and WebRTC viewers.
    h264_keyframe_interval: float = pydantic.Field(
        2.0, gt=0, le=60, description="seconds between H.264 keyframes (IDR frames)"
    )
    h264_join: Literal["idr", "gop", "idr_or_gop"] = pydantic.Field(
        "idr_or_gop",
        description="how a joining H.264 viewer starts: a forced IDR (at most one per keyframe "
        "interval, later joiners wait for the next keyframe), a replay of the current GOP, or "
        "a forced IDR when allowed and a replay otherwise",
    )
    h264_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] = (
        pydantic.Field("veryfast", description="x264 speed preset of the H.264 encoder")
    )
    h264_crf: int = pydantic.Field(
        23, ge=0, le=51, description="x264 constant rate factor: lower is better and larger"
    )
    h264_backlog: int = pydantic.Field(
        10,
        ge=1,
        le=1000,
        description="packets an H.264 viewer may fall behind before it skips to the next keyframe",
    )
    h264_encode_threads: int = pydantic.Field(
        1, ge=1, le=64, description="worker threads running H.264 encoders, for all devices"
    )

    # WebRTC viewers: which ICE servers they use and which local addresses they offer.
    webrtc_ice_servers: tuple[str, ...] = pydantic.Field(
        (),
        description="STUN/TURN server URLs for WebRTC viewers (stun:host:port, "
        "turn:host:port?transport=udp), comma-separated; default none: host candidates only",
    )
    webrtc_turn_username: str = pydantic.Field(
        "", description="username for the TURN servers of webrtc_ice_servers"
    )
    webrtc_turn_credential: pydantic.SecretStr = pydantic.Field(
        pydantic.SecretStr(""), description="credential for the TURN servers of webrtc_ice_servers"
    )
    webrtc_host_addresses: tuple[str, ...] = pydantic.Field(
        ("127.0.0.1",),
        description="local IP addresses WebRTC host candidates are gathered on, "
        "comma-separated; empty: every interface but loopback",
    )
    webrtc_connect_timeout: float = pydantic.Field(
        20.0,
        gt=0,
        le=300,
        description="seconds a WebRTC viewer may take from its offer to connected",
    )

    # Recording: a session's screen to MP4, from its device's shared H.264 encoder.
    recording_max_seconds: float = pydantic.Field(
        1800.0, gt=0, le=86400, description="longest recording, in seconds; then it stops itself"
    )
    recording_max_bytes: int = pydantic.Field(
        1_000_000_000,
        ge=100_000,
        description="largest recording's video, in bytes; then it stops itself",
    )

    # Several instances on one Redis (bridge_actors._cluster); off without a Redis URL.
    redis_url: str | None = pydantic.Field(
        None,
        description="Redis URL (redis://host:port/db) shared by the instances of a cluster; "
        "unset (the default) runs one instance on its own",
    )
    instance_id: str = pydantic.Field(
        "bridge1",
        pattern=r"^[A-Za-z0-9_]{1,32}$",
        description="this instance's name in the cluster: letters, digits, '_'; it prefixes "
        "the ids of the sessions it owns, so the proxy routes by session id",
    )
    advertised_url: str | None = pydantic.Field(
        None,
        description="the URL other instances and the proxy reach this instance at "
        "(default http://host:port as bound)",
    )
    cluster_lease: float = pydantic.Field(
        10.0, gt=0, description="seconds an instance stays listed after its last heartbeat"
    )
    cluster_heartbeat: float = pydantic.Field(
        2.0, gt=0, description="seconds between an instance's heartbeats to Redis"
    )
    # Event-loop lag as the load signal (bridge_actors._services.looplag).
    saturated_loop_lag: float = pydantic.Field(
        0.25,
        gt=0,
        description="seconds of event-loop lag (p99 over the last 30 s) above which /readyz "
        "answers 503 saturated and the cluster places new sessions elsewhere",
    )
    # Connection admission decided in Redis for the cluster (bridge_actors._cluster.admission).
    redis_admission_timeout: float = pydantic.Field(
        0.05,
        gt=0,
        le=5,
        description="seconds Redis may take to admit a connection (cluster cap and window); "
        "slower, or away, and this instance's own limiter decides",
    )

    # H.264 passthrough: a device's own H.264 (ios: idb video-stream --format h264), relayed.
    h264_passthrough: Literal["auto", "never"] = pydantic.Field(
        "auto",
        description="auto: relay a device's own H.264 undecoded while it has no JPEG viewer "
        "(ios backend); never: always encode the JPEG capture",
    )
    h264_replay_max_frames: int = pydantic.Field(
        300,
        ge=1,
        le=100000,
        description="longest GOP kept to replay to a joining H.264 viewer, in frames; past it "
        "joiners wait for the next keyframe",
    )
    h264_replay_max_bytes: int = pydantic.Field(
        8_000_000,
        ge=10_000,
        description="largest GOP kept to replay to a joining H.264 viewer, in bytes",
    )

    @pydantic.model_validator(mode="wrap")
    @classmethod
    def _raise_invalid_settings(
        cls,
        data: Any,
        handler: pydantic.ValidatorFunctionWrapHandler,
        info: pydantic.ValidationInfo,
    ) -> Any:
        # One plain, readable exception instead of pydantic's report. load_settings passes
        # the name under which each value was written as validation context.
        try:
            return handler(data)
        except pydantic.ValidationError as exc:
            labels = (info.context or {}).get("labels", {})
            raw = data if isinstance(data, Mapping) else {}
            raise InvalidSettings("\n".join(_explain(exc, raw, labels))) from None

    @pydantic.field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        if value is not None and value not in PROFILES:
            raise ValueError(f"unknown profile {value!r}; known profiles: {', '.join(PROFILES)}")
        return value

    @pydantic.field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @pydantic.field_validator("log_format", mode="before")
    @classmethod
    def _lower_case_format(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @pydantic.field_validator("restart_backoff_max")
    @classmethod
    def _backoff_max_not_below_initial(cls, value: float, info: pydantic.ValidationInfo) -> float:
        initial = info.data.get("restart_backoff_initial")
        if initial is not None and value < initial:
            raise ValueError(f"must be >= restart_backoff_initial ({initial})")
        return value

    @pydantic.field_validator("state_dir", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @pydantic.field_validator("backends", mode="before")
    @classmethod
    def _parse_backends(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list | tuple):
            return value  # let pydantic report the type
        names: list[str] = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"backend names must be strings, got {item!r}")
            name = item.strip().lower()
            if not name:
                continue
            if name not in BACKENDS:
                raise ValueError(f"unknown backend {item.strip()!r} (known: {', '.join(BACKENDS)})")
            if name not in names:
                names.append(name)
        if not names:
            raise ValueError(f"at least one backend is required (known: {', '.join(BACKENDS)})")
        return tuple(names)

    @pydantic.field_validator("server_names", "allowed_origins", mode="before")
    @classmethod
    def _parse_name_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        return value

    @pydantic.field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_trusted_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [item for item in value.split(",") if item.strip()]
        if isinstance(value, list | tuple):
            if not all(isinstance(item, str) for item in value):
                raise ValueError("proxies must be given as strings")
            parse_networks(value)
            return tuple(item.strip() for item in value)
        return value

    @pydantic.field_validator("webrtc_ice_servers", mode="before")
    @classmethod
    def _parse_ice_servers(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list | tuple):
            for url in value:
                if not isinstance(url, str) or not url.lower().startswith(_ICE_SCHEMES):
                    raise ValueError(f"{url!r} is not a stun:, stuns:, turn: or turns: URL")
            return tuple(value)
        return value

    @pydantic.field_validator("webrtc_host_addresses", mode="before")
    @classmethod
    def _parse_host_addresses(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list | tuple):
            for address in value:
                try:
                    ipaddress.ip_address(address)
                except (TypeError, ValueError):
                    raise ValueError(f"{address!r} is not an IP address") from None
            return tuple(value)
        return value

    @pydantic.field_validator("media_sources", mode="before")
    @classmethod
    def _parse_media_sources(cls, value: Any) -> Any:
        if isinstance(value, str):
            pairs: dict[str, str] = {}
            for item in value.split(","):
                if not item.strip():
                    continue
                name, sep, source = item.partition("=")
                if not sep:
                    raise ValueError(f"{item.strip()!r} is not of the form name=source")
                name = name.strip()
                if name in pairs:
                    raise ValueError(f"media source {name!r} is given twice")
                pairs[name] = source.strip()
            value = pairs
        if isinstance(value, Mapping):
            for name, source in value.items():
                if not isinstance(name, str) or not _MEDIA_NAME.fullmatch(name):
                    raise ValueError(
                        f"media source name {name!r} must be letters, digits, '.', '_' or '-'"
                    )
                if not isinstance(source, str) or not source.strip():
                    raise ValueError(f"media source {name!r} needs a non-empty source")
        return value

    def describe(self) -> dict[str, Any]:
        """JSON-safe values for ``/stats`` and the start-up log; passwords in URLs are masked."""
        described = self.model_dump(mode="json")
        described["media_sources"] = {
            name: mask_password(source) for name, source in self.media_sources.items()
        }
        return described


def mask_password(source: str) -> str:
    """A URL as it may be shown: any password replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(source)
    except ValueError:
        return source
    if parts.password is None:
        return source
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


# ---------------------------------------------------------------------------------------------
# Names: how each field is spelled in the environment, in config files and on the command line.

_SEED_FIELDS = frozenset(_DEFAULT_SEEDS)
_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")
_ENV_NAME_EXCEPTIONS = {"backends": "BRIDGE_BACKEND", "media_sources": "BRIDGE_MEDIA"}
CONFIG_ENV_NAME = "BRIDGE_CONFIG"


def _env_name(field: str) -> str:
    if field in _SEED_FIELDS:
        return field.upper()
    return _ENV_NAME_EXCEPTIONS.get(field, f"BRIDGE_{field.upper()}")


ENV_NAMES: Mapping[str, str] = types.MappingProxyType(
    {field: _env_name(field) for field in Settings.model_fields}
)

# Config-file keys: field names and environment names, compared case-insensitively.
_CONFIG_KEYS: Mapping[str, str] = {
    **{env.lower(): field for field, env in ENV_NAMES.items()},
    **{field: field for field in Settings.model_fields},
}


def _flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


# ---------------------------------------------------------------------------------------------
# The environment layer, read by pydantic-settings from any mapping (not only os.environ).


class _EnvironmentNames(BaseSettings):
    """Raw strings by environment name; validation happens once, later, on :class:`Settings`."""

    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True)


_EnvironmentReader: type[BaseSettings] = pydantic.create_model(  # type: ignore[call-overload]
    "_EnvironmentReader",
    __base__=_EnvironmentNames,
    **{
        name: (str | None, pydantic.Field(None, validation_alias=env))
        for name, env in {**ENV_NAMES, "config": CONFIG_ENV_NAME}.items()
    },
)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, pointed at a given mapping."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(_EnvironmentReader)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Empty variables count as unset (as with ``FOO= command``).
        return {key: value for key, value in self._environ.items() if value != ""}


def _read_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Our variables present in ``environ``, keyed by environment name."""
    found = _MappingEnvSource(environ)()
    return {name: value for name, value in found.items() if value is not None}


# ---------------------------------------------------------------------------------------------
# Loading.


class _Layers:
    """The merged raw values, each with the label under which the user wrote it."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.labels: dict[str, str] = {}
        self.problems: list[str] = []

    def set(self, field: str, value: Any, label: str) -> None:
        self.values[field] = value
        self.labels[field] = label

    def problem(self, line: str) -> None:
        self.problems.append(line)


def load_settings(
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults < profile < config file < environment < overrides.

    ``env`` defaults to ``os.environ``. ``config_file`` defaults to ``$BRIDGE_CONFIG``;
    ``.toml`` and ``.json`` files are understood. ``overrides`` are keyed by field
    name (the CLI flags); ``None`` means "not given". Reads the config file with
    blocking I/O: call it at start-up, before the event loop, or in a thread.

    Raises :class:`InvalidSettings` listing every problem, one per line, each naming
    the variable as written, the bad value and what is accepted.
    """
    environ = os.environ if env is None else env
    layers = _Layers()

    from_env = _read_environment(environ)
    given = _check_overrides(overrides or {}, layers)

    file_values: dict[str, tuple[Any, str]] = {}
    path = config_file if config_file is not None else from_env.get(CONFIG_ENV_NAME)
    if path is not None:
        file_values = _read_config_file(Path(path).expanduser(), layers)

    # The profile chooses the seeds, so it is resolved before anything else is layered.
    profile, profile_label = None, None
    if "profile" in file_values:
        profile, profile_label = file_values["profile"]
    if ENV_NAMES["profile"] in from_env:
        profile, profile_label = from_env[ENV_NAMES["profile"]], ENV_NAMES["profile"]
    if "profile" in given:
        profile, profile_label = given["profile"], _flag_name("profile")
    seeds = _DEFAULT_SEEDS
    if profile is not None:
        if isinstance(profile, str) and profile in PROFILES:
            seeds = PROFILES[profile]
            layers.set("profile", profile, str(profile_label))
        else:
            layers.problem(
                f"{profile_label}: {_show(profile)} is not a known profile; "
                f"known profiles: {', '.join(PROFILES)}"
            )

    for field, value in seeds.items():
        if seeds is not _DEFAULT_SEEDS:
            layers.set(field, value, f"{field} (profile {profile!r})")
    layers.set("state_dir", _default_state_dir(environ), "state_dir (default)")
    for field, (value, label) in file_values.items():
        if field != "profile":
            layers.set(field, value, label)
    for field, env_name in ENV_NAMES.items():
        if field != "profile" and env_name in from_env:
            layers.set(field, from_env[env_name], env_name)
    for field, value in given.items():
        if field != "profile":
            layers.set(field, value, _flag_name(field))

    try:
        settings = Settings.model_validate(layers.values, context={"labels": layers.labels})
    except InvalidSettings as exc:
        layers.problems.extend(str(exc).splitlines())
    else:
        if not layers.problems:
            return settings
    raise InvalidSettings("\n".join(layers.problems))


def _check_overrides(overrides: Mapping[str, Any], layers: _Layers) -> dict[str, Any]:
    given = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in Settings.model_fields:
            layers.problem(f"override {key!r} is not a setting")
            continue
        given[key] = value
    return given


def _read_config_file(path: Path, layers: _Layers) -> dict[str, tuple[Any, str]]:
    """The file's values keyed by field, each with its label; problems go to ``layers``."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        layers.problem(
            f"config file {path}: unsupported type {suffix or '(none)'!r}; "
            "expected a .toml or .json file"
        )
        return {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        layers.problem(f"config file {path}: cannot be read: {exc.strerror or exc}")
        return {}
    try:
        document = tomllib.loads(raw.decode()) if suffix == ".toml" else json.loads(raw)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        layers.problem(f"config file {path}: not valid {suffix[1:].upper()}: {exc}")
        return {}
    if not isinstance(document, dict):
        layers.problem(f"config file {path}: expected a table of settings at the top level")
        return {}

    values: dict[str, tuple[Any, str]] = {}
    keys: dict[str, str] = {}
    for key, value in document.items():
        field = _CONFIG_KEYS.get(key.lower())
        if field is None:
            guess = difflib.get_close_matches(key.lower(), _CONFIG_KEYS, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            layers.problem(f"{key} in {path}: unknown setting{hint}")
        elif field in keys:
            layers.problem(f"{key} in {path}: the same setting as {keys[field]}, given twice")
        else:
            keys[field] = key
            values[field] = (value, f"{key} in {path}")
    return values


def _explain(
    exc: pydantic.ValidationError, raw: Mapping[str, Any], labels: Mapping[str, str]
) -> list[str]:
    """One line per bad setting: its name as written, the value as written, what is accepted."""
    lines = []
    reported: set[str] = set()
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "settings"
        if field in reported:
            continue  # one line per setting, even when a container has several bad items
        reported.add(field)
        label = labels.get(field) or (field if field in raw else f"{field} (default)")
        if error["type"] == "extra_forbidden":
            lines.append(f"{label}: not a setting")
            continue
        shown = _show(raw.get(field, error["input"]))
        if error["type"] == "value_error":
            reason = str(error["ctx"]["error"])
        else:
            reason = f"expected {_accepted(field)}"
        lines.append(f"{label}: {shown} is not valid; {reason}")
    return lines


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


_ACCEPTED_OVERRIDES = {
    "backends": f"backend names separated by commas, from: {', '.join(BACKENDS)}",
    "media_sources": "name=source pairs separated by commas (a table in a config file)",
    "state_dir": "a directory path",
    "trusted_proxies": "IP addresses or CIDR networks separated by commas",
}

_TYPE_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}


def _accepted(field: str) -> str:
    """A human description of what ``field`` accepts, from its type and bounds."""
    if field in _ACCEPTED_OVERRIDES:
        return _ACCEPTED_OVERRIDES[field]
    info = Settings.model_fields.get(field)
    if info is None:
        return "a known setting"
    choices = getattr(info.annotation, "__args__", ())
    if choices and all(isinstance(choice, str) for choice in choices):
        return "one of " + ", ".join(choices)
    kind = _TYPE_NAMES.get(info.annotation, "a valid value")  # type: ignore[arg-type]
    low = high = None
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            low = f">= {bound.ge}"
        elif isinstance(bound, annotated_types.Gt):
            low = f"> {bound.gt}"
        elif isinstance(bound, annotated_types.Le):
            high = bound.le
    if low is not None and high is not None and low.startswith(">="):
        return f"{kind} from {low[3:]} to {high}"
    if low is not None:
        return f"{kind} {low}"
    return kind
