"""The operator's one Settings object: built from the environment, then the flags, checked."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from trackop import __version__, cli
from trackop.settings import ServerLimits, Settings


def run_args(*extra: str):
    return cli.build_parser().parse_args(["run", "--all-namespaces", *extra])


def test_defaults_without_environment():
    settings = Settings.from_environ({})
    assert settings == Settings()
    assert settings.drift_interval == 60 and settings.full_check_interval == 600
    assert settings.schema_templates is True and settings.operator_namespace == "trackop-system"
    assert settings.webhook.address == "" and settings.webhook.failure_policy == "Ignore"
    assert settings.webhook.renew_before == dt.timedelta(days=30) and settings.log_format == "full"


def test_the_environment_as_the_chart_and_the_tests_set_it():
    settings = Settings.from_environ({
        "TRACKOP_DRIFT_INTERVAL": "3", "TRACKOP_NAMESPACE": "ops", "TRACKOP_SCHEMA_TEMPLATES": "OFF",
        "TRACKOP_WEBHOOK_ROTATION_CHECK": "1", "TRACKOP_WEBHOOK_RENEW_BEFORE_DAYS": "90",
        "TRACKOP_MANAGED_POSTGRES_ADDRESS": "pod", "TRACKOP_VERBOSE": "1"})
    assert settings.drift_interval == 3
    assert settings.full_check_interval == 30  # ten drift intervals unless set
    assert settings.operator_namespace == "ops" and settings.schema_templates is False
    assert settings.webhook.rotation_check_seconds == 1 and settings.webhook.renew_before == dt.timedelta(days=90)
    assert settings.managed_postgres_address == "pod" and settings.verbose is True
    assert Settings.from_environ({"TRACKOP_DRIFT_INTERVAL": "3", "TRACKOP_FULL_CHECK_INTERVAL": "0"}
                                 ).full_check_interval == 0


@pytest.mark.parametrize(("environ", "says"), [
    ({"TRACKOP_DRIFT_INTERVAL": "soon"}, "TRACKOP_DRIFT_INTERVAL='soon' is not a number"),
    ({"TRACKOP_DRIFT_INTERVAL": "0"}, "drift interval must be positive"),
    ({"TRACKOP_WEBHOOK_FAILURE_POLICY": "Maybe"}, "failure policy must be Ignore or Fail"),
    ({"TRACKOP_MANAGED_POSTGRES_ADDRESS": "node"}, "managed PostgreSQL address must be one of service, pod"),
    ({"TRACKOP_LOG_FORMAT": "xml"}, "log format must be one of plain, full, json"),
    ({"TRACKOP_WEBHOOK_READ_TIMEOUT": "0"}, "webhook's read timeout must be positive, not 0"),
    ({"TRACKOP_WEBHOOK_KEEPALIVE_TIMEOUT": "-1"}, "webhook's keepalive timeout must be positive"),
    ({"TRACKOP_WEBHOOK_MAX_CONNECTIONS": "0"}, "webhook's max connections must be positive"),
    ({"TRACKOP_WEBHOOK_MAX_BODY_BYTES": "lots"}, "TRACKOP_WEBHOOK_MAX_BODY_BYTES='lots' is not a number"),
    ({"TRACKOP_ALLOW_OPERATOR_CLOUD_IDENTITY": "maybe"}, "is not true or false"),
    ({"TRACKOP_ALLOWED_ARTIFACT_ENDPOINTS": "https://s3.amazonaws.com"}, "without scheme, port or path"),
    ({"TRACKOP_ALLOWED_ARTIFACT_ENDPOINTS": "minio:9000"}, "without scheme, port or path"),
])
def test_a_bad_setting_is_refused_naming_it(environ, says):
    with pytest.raises(ValueError, match=says):
        Settings.from_environ(environ)


def test_flags_win_over_the_environment():
    environ = {"TRACKOP_NAMESPACE": "from-env", "TRACKOP_WEBHOOK_FAILURE_POLICY": "Fail", "TRACKOP_DRIFT_INTERVAL": "5"}
    settings = cli.settings_from(run_args("--operator-namespace", "from-flag", "--webhook-address", "127.0.0.1:9443",
                                          "--log-format", "json"), environ)
    assert settings.operator_namespace == "from-flag"
    assert settings.webhook.address == "127.0.0.1:9443"
    assert settings.webhook.failure_policy == "Fail"  # no flag given: the environment's
    assert settings.drift_interval == 5 and settings.log_format == "json"
    assert cli.settings_from(run_args("--webhook-failure-policy", "Ignore"), environ).webhook.failure_policy == "Ignore"


def test_the_settings_are_immutable():
    with pytest.raises(AttributeError):
        Settings().drift_interval = 1  # type: ignore[misc]


def test_version_and_log_format_on_the_product_cli():
    shown = subprocess.run([sys.executable, "-m", "trackop.cli", "--version"], capture_output=True, text=True,
                           check=True).stdout
    assert shown.strip() == f"trackop {__version__}" and __version__ not in ("", "0+unknown")
    assert run_args("--log-format", "json").log_format == "json"
    with pytest.raises(SystemExit):
        run_args("--log-format", "yaml")


def test_a_bad_setting_stops_trackop_run_with_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "trackop.cli", "run", "--all-namespaces"], capture_output=True,
                          text=True, env={"TRACKOP_DRIFT_INTERVAL": "never", "PATH": "/usr/bin:/bin",
                                          "HOME": str(tmp_path)})
    assert done.returncode == 1
    assert "trackop: error: invalid setting: TRACKOP_DRIFT_INTERVAL='never' is not a number" in done.stderr
    assert not json.dumps(done.stderr).count("Traceback")


def test_the_webhook_server_limits_from_the_environment_then_the_flags():
    assert Settings().webhook.limits == ServerLimits()
    assert ServerLimits().max_body_bytes == 3 * 1024 * 1024 and ServerLimits().keepalive_timeout > 90
    environ = {"TRACKOP_WEBHOOK_READ_TIMEOUT": "4", "TRACKOP_WEBHOOK_KEEPALIVE_TIMEOUT": "200",
               "TRACKOP_WEBHOOK_MAX_CONNECTIONS": "64", "TRACKOP_WEBHOOK_MAX_BODY_BYTES": "1048576"}
    assert Settings.from_environ(environ).webhook.limits == ServerLimits(
        read_timeout=4, keepalive_timeout=200, max_connections=64, max_body_bytes=1048576)
    flagged = cli.settings_from(run_args("--webhook-read-timeout", "2.5", "--webhook-max-connections", "8"), environ)
    assert flagged.webhook.limits == ServerLimits(read_timeout=2.5, keepalive_timeout=200, max_connections=8,
                                                  max_body_bytes=1048576)  # the rest from the environment
    assert cli.settings_from(run_args(), {}).webhook.limits == ServerLimits()


def test_a_bad_webhook_limit_flag_is_refused_naming_it():
    with pytest.raises(ValueError, match="webhook's read timeout must be positive, not 0"):
        cli.settings_from(run_args("--webhook-read-timeout", "0"), {})
    with pytest.raises(ValueError, match="webhook's max body bytes must be positive, not -5"):
        cli.settings_from(run_args("--webhook-max-body-bytes", "-5"), {})


def test_watched_namespaces_scope_the_operators_secrets_unless_they_are_patterns():
    assert cli.settings_from(run_args(), {}).secret_scope is None
    parse = cli.build_parser().parse_args
    scoped = cli.settings_from(parse(["run", "-n", "ml-a", "-n", "ml-b"]), {})
    assert scoped.secret_scope == frozenset({"ml-a", "ml-b"})
    assert cli.settings_from(parse(["run", "-n", "ml-*"]), {}).secret_scope is None, "a kopf pattern: every namespace"
