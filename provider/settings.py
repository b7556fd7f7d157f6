"""Settings: config/ defaults, then the PROVIDER_CONFIG file, PROVIDER_* env, then tests."""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = PROJECT_ROOT / "config" / "defaults.toml"
ENV_PREFIX = "PROVIDER_"


class SettingsError(ValueError):
    """A setting has a value of the wrong type or an unknown name."""


def _coerce(key: str, raw: str, default: Any) -> Any:
    """Turn an environment string into the type of the setting's default."""
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{ENV_PREFIX}{key} must be true or false, not {raw!r}")
    if isinstance(default, int | float):
        try:
            number = float(raw)
        except ValueError:
            raise SettingsError(f"{ENV_PREFIX}{key} must be a number, not {raw!r}") from None
        return int(number) if isinstance(default, int) and number.is_integer() else number
    return raw


def load_settings(
    test_config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return every setting, layered: defaults → PROVIDER_CONFIG file → PROVIDER_* env → tests."""
    environ = os.environ if environ is None else environ
    with DEFAULTS_FILE.open("rb") as handle:
        defaults: dict[str, Any] = tomllib.load(handle)
    settings = dict(defaults)

    config_file = environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        try:
            with open(config_file, "rb") as handle:
                from_file = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(
                f"cannot read {ENV_PREFIX}CONFIG file {config_file}: {exc}"
            ) from exc
        unknown = sorted(set(from_file) - set(defaults))
        if unknown:
            raise SettingsError(f"unknown settings in {config_file}: {', '.join(unknown)}")
        settings.update(from_file)

    for key, default in defaults.items():
        raw = environ.get(f"{ENV_PREFIX}{key}")
        if raw is not None:
            settings[key] = _coerce(key, raw, default)

    if test_config:
        settings.update(test_config)
    return _derive(settings)


def _derive(settings: dict[str, Any]) -> dict[str, Any]:
    """Fill the settings whose empty default means "work it out from the others"."""
    instance_dir = Path(settings["INSTANCE_DIR"] or PROJECT_ROOT / "instance").resolve()
    settings["INSTANCE_DIR"] = str(instance_dir)
    if not settings["DATABASE_URL"]:
        settings["DATABASE_URL"] = f"sqlite:///{instance_dir / 'provider.db'}"
    settings["DATA_DIR"] = str(Path(settings["DATA_DIR"] or instance_dir).resolve())
    if float(settings["QUOTA_MIN_GB"]) <= 0 or float(settings["QUOTA_MIN_GB"]) > float(
        settings["QUOTA_MAX_GB"]
    ):
        raise SettingsError("QUOTA_MIN_GB must be above 0 and not above QUOTA_MAX_GB")
    for key, value in settings.items():
        # A port beyond 16 bits would be wrapped by the system (70000 listens on 4464).
        if key.endswith("_PORT") and not 0 <= int(value) <= 65535:
            raise SettingsError(f"{key} must be a port number from 0 to 65535, not {value}")
    _check_outbound(settings)
    _check_sieve(settings)
    _check_workers(settings)
    _check_two_factor(settings)
    return settings


TWO_FACTOR_RANGES = {
    "ADMIN_2FA_REMEMBER_DAYS": (0, 365),
    "ADMIN_2FA_STEP_SECONDS": (30, 3600),
}
# Whole-number settings checked the same way (a negative or fractional cap is a typo).
WHOLE_NUMBER_RANGES = {
    **TWO_FACTOR_RANGES,
    "LIST_EXACT_TOTAL_MAX": (0, 100_000_000),
}


def _check_two_factor(settings: dict[str, Any]) -> None:
    """Admin two-factor and list-total settings: whole numbers within range, refused at start
    otherwise."""
    for key, (lowest, highest) in WHOLE_NUMBER_RANGES.items():
        value = settings.get(key, lowest)
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
            raise SettingsError(
                f"{key} must be a whole number from {lowest} to {highest}, not {value}"
            )


# Beyond this a typo (each worker is a process with its own database pool and caches).
MAX_MAIL_WORKERS = 256
MAX_WEB_WORKERS = 64


def _check_workers(settings: dict[str, Any]) -> None:
    """MAIL_WORKERS and WEB_WORKERS: whole numbers from 0 (one per core) to their maximum."""
    for key, highest in (("MAIL_WORKERS", MAX_MAIL_WORKERS), ("WEB_WORKERS", MAX_WEB_WORKERS)):
        value = settings.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= highest:
            raise SettingsError(
                f"{key} must be a whole number from 0 (one per core) to {highest}, not {value}"
            )


SIEVE_RANGES = {
    # The interpreter refuses scripts over 1 MiB whatever this says.
    "SIEVE_MAX_SCRIPT_BYTES": (1, 1024 * 1024),
    "SIEVE_MAX_SCRIPTS": (1, 1000),
}


def _check_sieve(settings: dict[str, Any]) -> None:
    """The Sieve script limits: whole numbers within range, refused at start otherwise."""
    for key, (lowest, highest) in SIEVE_RANGES.items():
        if key not in settings:
            continue
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
            raise SettingsError(
                f"{key} must be a whole number from {lowest} to {highest}, not {value}"
            )


RELAY = re.compile(r"^(?:smtp://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$")
OUTBOUND_RANGES = {
    # setting: (lowest, highest) — beyond these a typo, not a choice
    "OUTBOUND_MAX_DAYS": (0.01, 365),
    "OUTBOUND_KEEP_DAYS": (1, 3650),
    "OUTBOUND_DELAY_NOTICE_HOURS": (0, 24 * 365),
    "OUTBOUND_TIMEOUT_SECONDS": (1, 3600),
    "OUTBOUND_CONCURRENCY": (1, 256),
    "OUTBOUND_MX_PORT": (1, 65535),
    "WEBHOOK_TIMEOUT_SECONDS": (0.1, 60),
    "WEBHOOK_RETRY_HOURS": (0.001, 720),
    "WEBHOOK_RETRY_BASE_SECONDS": (0.01, 86400),
    "WEBHOOK_RETRY_MAX_SECONDS": (0.01, 7 * 86400),
    "WEBHOOK_POLL_SECONDS": (0.01, 3600),
    "WEBHOOK_CONCURRENCY": (1, 64),
    "WEBHOOK_KEEP_DAYS": (1, 3650),
}
RELAY_TLS_MODES = ("opportunistic", "starttls", "required", "tls", "none")


def _check_outbound(settings: dict[str, Any]) -> None:
    """The queue runner's settings, refused at start with the setting named (not at the
    first delivery, hours later)."""
    for key, (lowest, highest) in OUTBOUND_RANGES.items():
        if key in settings and not lowest <= float(settings[key]) <= highest:
            raise SettingsError(
                f"{key} must be from {lowest:g} to {highest:g}, not {settings[key]}"
            )
    relay = str(settings.get("OUTBOUND_RELAY") or "").strip()
    match = RELAY.match(relay) if relay else None
    if relay and (match is None or not 1 <= int(match.group(1) or 25) <= 65535):
        raise SettingsError(f"OUTBOUND_RELAY must be host[:port], not {relay!r}")
    tls = str(settings.get("OUTBOUND_RELAY_TLS") or "opportunistic").strip().lower()
    if tls not in RELAY_TLS_MODES:
        raise SettingsError(
            f"OUTBOUND_RELAY_TLS must be one of {', '.join(RELAY_TLS_MODES)}, not {tls!r}"
        )
    ca_file = str(settings.get("OUTBOUND_RELAY_CA_FILE") or "").strip()
    if ca_file and not (os.path.isfile(ca_file) and os.access(ca_file, os.R_OK)):
        raise SettingsError(f"OUTBOUND_RELAY_CA_FILE {ca_file!r} is not a readable file")


def ensure_secret_key(settings: dict[str, Any]) -> str:
    """Return SECRET_KEY, generating it once into instance/secret_key when unset."""
    if settings["SECRET_KEY"]:
        return str(settings["SECRET_KEY"])
    path = Path(settings["INSTANCE_DIR"]) / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and linked into place: two processes starting at once agree on one
        # key, and nobody ever reads a half-written file.
        draft = path.with_name(f".secret_key.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()
