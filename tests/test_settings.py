"""Settings layering: defaults → PROVIDER_CONFIG file → PROVIDER_* env → test mapping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provider import create_app
from provider.settings import SettingsError, ensure_secret_key, load_settings


def test_defaults_are_the_documented_ones(tmp_path):
    settings = load_settings(environ={"PROVIDER_INSTANCE_DIR": str(tmp_path)})
    assert settings["BIND_HOST"] == "127.0.0.1"
    assert (settings["WEB_PORT"], settings["IMAP_PORT"], settings["IMAPS_PORT"]) == (
        5000,
        1143,
        1993,
    )
    assert (settings["POP3_PORT"], settings["POP3S_PORT"]) == (1110, 1995)
    assert (settings["LMTP_PORT"], settings["SMTP_PORT"]) == (2424, 2525)
    assert (settings["QUOTA_MIN_GB"], settings["QUOTA_MAX_GB"]) == (8, 100)
    assert settings["DATABASE_URL"] == f"sqlite:///{tmp_path / 'provider.db'}"
    assert settings["DATA_DIR"] == str(tmp_path)


def test_public_client_settings_are_unset_by_default(tmp_path):
    """Empty/0: customers are shown what listens, never 993/995/587 that nothing serves."""
    settings = load_settings(environ={"PROVIDER_INSTANCE_DIR": str(tmp_path)})
    for name in ("IMAP", "POP3", "SMTP"):
        assert settings[f"PUBLIC_{name}_HOST"] == ""
        assert settings[f"PUBLIC_{name}_PORT"] == 0
    overridden = load_settings(
        environ={"PROVIDER_INSTANCE_DIR": str(tmp_path), "PROVIDER_PUBLIC_IMAP_PORT": "993"}
    )
    assert overridden["PUBLIC_IMAP_PORT"] == 993


def test_each_layer_overrides_the_one_before(tmp_path):
    config_file = tmp_path / "provider.toml"
    config_file.write_text('WEB_PORT = 6000\nIMAP_PORT = 6143\nBIND_HOST = "0.0.0.0"\n')
    environ = {
        "PROVIDER_CONFIG": str(config_file),
        "PROVIDER_IMAP_PORT": "7143",
        "PROVIDER_QUOTA_MIN_GB": "0.0001",
        "PROVIDER_COOKIE_SECURE": "false",
        "PROVIDER_INSTANCE_DIR": str(tmp_path),
    }
    settings = load_settings({"BIND_HOST": "127.0.0.2"}, environ=environ)
    assert settings["WEB_PORT"] == 6000  # file
    assert settings["IMAP_PORT"] == 7143  # env beats file
    assert settings["BIND_HOST"] == "127.0.0.2"  # test mapping beats all
    assert settings["QUOTA_MIN_GB"] == 0.0001 and settings["COOKIE_SECURE"] is False


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PROVIDER_WEB_PORT": "http"}, "must be a number"),
        ({"PROVIDER_COOKIE_SECURE": "maybe"}, "true or false"),
        ({"PROVIDER_QUOTA_MIN_GB": "0"}, "QUOTA_MIN_GB"),
        ({"PROVIDER_QUOTA_MIN_GB": "200"}, "QUOTA_MIN_GB"),
        ({"PROVIDER_CONFIG": "/nonexistent/provider.toml"}, "cannot read"),
        ({"PROVIDER_IMAP_PORT": "70000"}, "IMAP_PORT must be a port number from 0 to 65535"),
        ({"PROVIDER_WEB_PORT": "-1"}, "WEB_PORT must be a port number"),
        ({"PROVIDER_OUTBOUND_CONCURRENCY": "0"}, "OUTBOUND_CONCURRENCY must be from 1 to 256"),
        ({"PROVIDER_OUTBOUND_CONCURRENCY": "99999999999"}, "OUTBOUND_CONCURRENCY"),
        ({"PROVIDER_OUTBOUND_MAX_DAYS": "-1"}, "OUTBOUND_MAX_DAYS"),
        ({"PROVIDER_OUTBOUND_TIMEOUT_SECONDS": "0"}, "OUTBOUND_TIMEOUT_SECONDS"),
        ({"PROVIDER_OUTBOUND_MX_PORT": "0"}, "OUTBOUND_MX_PORT"),
        ({"PROVIDER_OUTBOUND_RELAY": "smtp.example.net:99999"}, "OUTBOUND_RELAY must be"),
        ({"PROVIDER_OUTBOUND_RELAY": "a b:25"}, "OUTBOUND_RELAY must be host"),
        ({"PROVIDER_OUTBOUND_RELAY_TLS": "sometimes"}, "OUTBOUND_RELAY_TLS must be one of"),
        ({"PROVIDER_OUTBOUND_RELAY_TLS_VERIFY": "maybe"}, "must be true or false"),
        ({"PROVIDER_OUTBOUND_RELAY_CA_FILE": "/nonexistent/ca.pem"}, "not a readable file"),
        ({"PROVIDER_OUTBOUND_RELAY_CA_FILE": "/"}, "OUTBOUND_RELAY_CA_FILE"),
        ({"PROVIDER_OUTBOUND_KEEP_DAYS": "0"}, "OUTBOUND_KEEP_DAYS must be from 1 to 3650"),
        ({"PROVIDER_OUTBOUND_KEEP_DAYS": "3651"}, "OUTBOUND_KEEP_DAYS must be from 1 to 3650"),
        ({"PROVIDER_OUTBOUND_KEEP_DAYS": "1e308"}, "OUTBOUND_KEEP_DAYS"),
        ({"PROVIDER_OUTBOUND_KEEP_DAYS": "nan"}, "OUTBOUND_KEEP_DAYS"),
        ({"PROVIDER_OUTBOUND_KEEP_DAYS": "thirty"}, "OUTBOUND_KEEP_DAYS must be a number"),
        ({"PROVIDER_SIEVE_MAX_SCRIPT_BYTES": "0"}, "SIEVE_MAX_SCRIPT_BYTES must be a whole"),
        ({"PROVIDER_SIEVE_MAX_SCRIPT_BYTES": "1e9"}, "from 1 to 1048576"),
        ({"PROVIDER_SIEVE_MAX_SCRIPTS": "2.5"}, "SIEVE_MAX_SCRIPTS must be a whole number"),
        ({"PROVIDER_SIEVE_MAX_SCRIPTS": "nan"}, "SIEVE_MAX_SCRIPTS"),
        ({"PROVIDER_MAIL_WORKERS": "-1"}, "MAIL_WORKERS must be a whole number from 0"),
        ({"PROVIDER_MAIL_WORKERS": "257"}, "MAIL_WORKERS must be a whole number from 0"),
        ({"PROVIDER_MAIL_WORKERS": "1.5"}, "MAIL_WORKERS must be a whole number"),
        (
            {"PROVIDER_WEB_WORKERS": "65"},
            r"WEB_WORKERS must be a whole number from 0 \(one per core\) to 64",
        ),
        ({"PROVIDER_WEB_WORKERS": "2.5"}, "WEB_WORKERS must be a whole number"),
        ({"PROVIDER_MAIL_WORKERS": "1e308"}, "MAIL_WORKERS"),
        ({"PROVIDER_MAIL_WORKERS": "inf"}, "MAIL_WORKERS"),
        ({"PROVIDER_MAIL_WORKERS": "nan"}, "MAIL_WORKERS"),
        ({"PROVIDER_MAIL_WORKERS": "two"}, "MAIL_WORKERS must be a number"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(environ, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=environ)


def test_unknown_key_in_config_file_is_refused(tmp_path: Path):
    config_file = tmp_path / "provider.toml"
    config_file.write_text("WEB_PROT = 1\n")
    with pytest.raises(SettingsError, match="WEB_PROT"):
        load_settings(environ={"PROVIDER_CONFIG": str(config_file)})


def test_secret_key_is_generated_once_and_kept(tmp_path):
    settings = load_settings({"INSTANCE_DIR": str(tmp_path)}, environ={})
    first = ensure_secret_key(settings)
    assert len(first) >= 40
    assert ensure_secret_key(settings) == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_app_uses_secure_cookie_settings(tmp_path):
    app = create_app({"INSTANCE_DIR": str(tmp_path)})
    assert app.config["SESSION_COOKIE_NAME"] == "__Host-session"
    assert app.config["SESSION_COOKIE_SECURE"] and app.config["SESSION_COOKIE_HTTPONLY"]
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert app.config["SECRET_KEY"] == (tmp_path / "secret_key").read_text().strip()


def test_mail_workers_default_to_one_per_core_and_take_a_number(tmp_path: Path):
    from provider.serve import mail_workers

    class App:
        def __init__(self, config: dict[str, object]) -> None:
            self.config = config

    settings = load_settings(environ={"PROVIDER_INSTANCE_DIR": str(tmp_path)})
    assert settings["MAIL_WORKERS"] == 0
    assert mail_workers(App(settings)) == (os.cpu_count() or 1)  # type: ignore[arg-type]
    settings = load_settings(
        environ={"PROVIDER_INSTANCE_DIR": str(tmp_path), "PROVIDER_MAIL_WORKERS": "3"}
    )
    assert mail_workers(App(settings)) == 3  # type: ignore[arg-type]


def test_web_workers_default_to_one_per_core_up_to_four_and_take_a_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from provider import serve

    class App:
        def __init__(self, config: dict[str, object]) -> None:
            self.config = config

    settings = load_settings(environ={"PROVIDER_INSTANCE_DIR": str(tmp_path)})
    assert settings["WEB_WORKERS"] == 0
    for cores, expected in ((1, 1), (2, 2), (64, 4)):
        monkeypatch.setattr(serve.os, "cpu_count", lambda cores=cores: cores)
        assert serve.web_workers(App(settings)) == expected  # type: ignore[arg-type]
    settings = load_settings(
        environ={"PROVIDER_INSTANCE_DIR": str(tmp_path), "PROVIDER_WEB_WORKERS": "12"}
    )
    assert serve.web_workers(App(settings)) == 12  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", ["-1", "2.5", "100000001", "99999999999999999999"])
def test_a_bad_exact_total_cap_stops_start(tmp_path, raw):
    with pytest.raises(SettingsError, match="LIST_EXACT_TOTAL_MAX must be a whole number"):
        load_settings(
            environ={"PROVIDER_INSTANCE_DIR": str(tmp_path), "PROVIDER_LIST_EXACT_TOTAL_MAX": raw}
        )


def test_the_exact_total_cap_defaults_to_ten_thousand_and_zero_is_allowed(tmp_path):
    environ = {"PROVIDER_INSTANCE_DIR": str(tmp_path)}
    assert load_settings(environ=environ)["LIST_EXACT_TOTAL_MAX"] == 10_000
    environ["PROVIDER_LIST_EXACT_TOTAL_MAX"] = "0"
    assert load_settings(environ=environ)["LIST_EXACT_TOTAL_MAX"] == 0
