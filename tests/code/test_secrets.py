"""Secrets are never shown, stored or hashed; serving auth fails closed.

``serving.api_key`` and credentials inside ``tracking.*`` URIs go through one redaction
(``components/secrets.py``); an empty ``RATCHET_API_KEY`` is an error, not "no auth".
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import get_app
from components.config import load_config
from components.config.overrides import redact_override, split_secret_overrides
from components.errors import ConfigError, ServingError
from components.secrets import mask_uri_credentials
from tests.conftest import PROJECT_ROOT

PARAMS = str(PROJECT_ROOT / "params.yaml")
KEY = "k3y-9f1c2b7e-never-shown"
MLFLOW_URI = "http://alice:pa55word@mlflow.internal:5000"
DVC_URI = "s3://bucket/ratchet?X-Amz-Signature=s1gnature&X-Amz-Credential=AKIAEXAMPLE&region=eu"


def secret_config(**extra: str) -> Any:
    overrides = {
        "serving.api_key": KEY,
        "tracking.mlflow_uri": MLFLOW_URI,
        "tracking.dvc_remote_url": DVC_URI,
        **extra,
    }
    return load_config(PARAMS, overrides=[f"{key}={value}" for key, value in overrides.items()])


def assert_no_secret(text: str) -> None:
    for secret in (KEY, "pa55word", "alice", "s1gnature", "AKIAEXAMPLE"):
        assert secret not in text


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (MLFLOW_URI, "http://***@mlflow.internal:5000"),
        ("postgresql://u:p@db/mlflow", "postgresql://***@db/mlflow"),
        ("https://token@host/path", "https://***@host/path"),
        (DVC_URI, "s3://bucket/ratchet?X-Amz-Signature=***&X-Amz-Credential=***&region=eu"),
        ("https://host/x?access_token=t0k&page=2", "https://host/x?access_token=***&page=2"),
        ("sqlite:////home/me/.ratchet/mlflow.db", "sqlite:////home/me/.ratchet/mlflow.db"),
        ("s3://bucket/ratchet", "s3://bucket/ratchet"),
        ("/srv/dvc-remote", "/srv/dvc-remote"),
    ],
)
def test_uri_credentials_are_masked(uri: str, shown: str) -> None:
    assert mask_uri_credentials(uri) == shown


def test_every_dump_of_the_config_shows_secrets_as_stars() -> None:
    from components.tracking import config_params

    config = secret_config()

    assert config.serving.api_key is not None
    assert config.serving.api_key.get_secret_value() == KEY  # still usable where needed
    assert config.tracking.mlflow_uri == MLFLOW_URI
    for dumped in (config.to_yaml(), config.model_dump_json(), str(config.model_dump())):
        assert_no_secret(dumped)
    assert_no_secret(repr(config))
    params = config_params(config)  # what the flow logs as MLflow params
    assert params["serving.api_key"] == "***"
    assert params["tracking.mlflow_uri"] == "http://***@mlflow.internal:5000"
    assert params["tracking.dvc_remote_url"].startswith("s3://bucket/ratchet?X-Amz-Signature=***")
    assert_no_secret(json.dumps(params))


def test_api_key_never_enters_the_build_hash() -> None:
    plain = load_config(PARAMS)
    keyed = load_config(PARAMS, overrides=[f"serving.api_key={KEY}"])
    other_key = load_config(PARAMS, overrides=["serving.api_key=another-key"])
    from_file = load_config(PARAMS, overrides=["serving.api_key_file=/run/secrets/ratchet"])

    # A key does not change the model: a nightly run still finds the champion current.
    assert keyed.build_hash() == plain.build_hash() == other_key.build_hash()
    assert from_file.build_hash() == plain.build_hash()
    assert keyed.section_hash("serving") == plain.section_hash("serving")


def test_uri_password_never_enters_the_build_hash() -> None:
    first = load_config(PARAMS, overrides=[f"tracking.mlflow_uri={MLFLOW_URI}"])
    rotated = load_config(
        PARAMS, overrides=[f"tracking.mlflow_uri={MLFLOW_URI.replace('5w', '6w')}"]
    )

    assert first.build_hash() == rotated.build_hash()


def test_api_key_override_is_taken_as_typed() -> None:
    typed = load_config(PARAMS, overrides=["serving.api_key=0123"]).serving.api_key
    assert typed is not None and typed.get_secret_value() == "0123"  # not YAML's octal 83
    quoted = load_config(PARAMS, overrides=["serving.api_key='a b'"]).serving.api_key
    assert quoted is not None and quoted.get_secret_value() == "a b"


def test_empty_api_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="serving.api_key.*is empty"):
        load_config(PARAMS, overrides=['serving.api_key=""'])


def test_validation_errors_do_not_echo_the_key() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(PARAMS, overrides=["serving={api_key: 424242, port: 0}"])

    message = str(raised.value)
    assert "serving.api_key" in message and "serving.port" in message
    assert "424242" not in message
    assert "(got '***')" in message


def test_overrides_are_redacted_and_secret_ones_move_to_the_environment() -> None:
    overrides = [
        f"serving.api_key={KEY}",
        f"tracking.mlflow_uri={MLFLOW_URI}",
        "tracking.prefect_api_url=http://127.0.0.1:4200/api",
        "train.lr=1e-4",
    ]

    assert [redact_override(item) for item in overrides] == [
        "serving.api_key=***",
        "tracking.mlflow_uri=http://***@mlflow.internal:5000",
        "tracking.prefect_api_url=http://127.0.0.1:4200/api",
        "train.lr=1e-4",
    ]
    assert redact_override(f"serving={{api_key: {KEY}, port: 8}}") == (
        'serving={"api_key": "***", "port": 8}'
    )
    kept, environment = split_secret_overrides(overrides)
    assert kept == ["tracking.prefect_api_url=http://127.0.0.1:4200/api", "train.lr=1e-4"]
    assert environment == {"RATCHET_API_KEY": KEY, "MLFLOW_TRACKING_URI": MLFLOW_URI}


def test_the_retrain_flow_stores_its_overrides_redacted() -> None:
    from flows.retrain import retrain

    stored = retrain.serialize_parameters(
        {"params": "params.yaml", "overrides": [f"serving.api_key={KEY}", "train.lr=1e-4"]}
    )

    assert stored == {
        "params": "params.yaml",
        "overrides": ["serving.api_key=***", "train.lr=1e-4"],
    }
    assert retrain.name == "retrain" and retrain.on_completion_hooks  # still the same flow


def test_ratchet_retrain_passes_secrets_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from cli import retrain as cli_retrain
    from flows import retrain

    seen: dict[str, Any] = {}

    def fake_retrain(**arguments: Any) -> dict[str, Any]:
        seen.update(arguments, key=os.environ.get("RATCHET_API_KEY"))
        return {}

    monkeypatch.setattr(retrain, "retrain", fake_retrain)
    monkeypatch.delenv("RATCHET_API_KEY", raising=False)
    cli_retrain.run_retrain(Path(PARAMS), None, [f"serving.api_key={KEY}", "train.lr=1e-4"])

    assert seen["overrides"] == ["train.lr=1e-4"]
    assert seen["key"] == KEY
    assert "RATCHET_API_KEY" not in os.environ  # only for the run


def test_config_show_prints_stars(state_dir: Path) -> None:
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(
            get_app(),
            ["config", "show", "--params", PARAMS, "--set", f"serving.api_key={KEY}"]
            + ["--set", f"tracking.mlflow_uri={MLFLOW_URI}", *extra],
        )
        assert result.exit_code == 0, result.output
        assert_no_secret(result.output)
        assert "***" in result.output


# Fail closed: the key a server uses, and what a Bento records.


def test_empty_ratchet_api_key_is_an_error_not_no_auth(
    monkeypatch: pytest.MonkeyPatch, state_dir: Path
) -> None:
    from cli.serving import serve_environment
    from components.state import ProjectPaths

    monkeypatch.setenv("RATCHET_API_KEY", "")
    paths = ProjectPaths.discover(PROJECT_ROOT)

    with pytest.raises(ServingError, match="RATCHET_API_KEY is set but empty"):
        serve_environment(secret_config(), paths)
    with pytest.raises(ServingError, match="RATCHET_API_KEY is set but empty"):
        serve_environment(load_config(PARAMS), paths)


def test_serve_gets_the_key_or_the_key_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_dir: Path
) -> None:
    from cli.serving import serve_environment
    from components.state import ProjectPaths

    monkeypatch.delenv("RATCHET_API_KEY", raising=False)
    monkeypatch.delenv("RATCHET_API_KEY_FILE", raising=False)
    paths = ProjectPaths.discover(PROJECT_ROOT)
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n")

    assert serve_environment(secret_config(), paths)["RATCHET_API_KEY"] == KEY
    from_file = serve_environment(
        load_config(PARAMS, overrides=[f"serving.api_key_file={key_file}"]), paths
    )
    assert from_file["RATCHET_API_KEY_FILE"] == str(key_file)  # read by the server
    assert "RATCHET_API_KEY" not in from_file
    key_file.write_text("\n")
    with pytest.raises(ServingError, match="the API key file is empty"):
        serve_environment(
            load_config(PARAMS, overrides=[f"serving.api_key_file={key_file}"]), paths
        )


def test_a_bento_built_with_a_key_records_auth_required_not_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serving.build import serve_arguments

    monkeypatch.delenv("RATCHET_API_KEY", raising=False)
    monkeypatch.delenv("RATCHET_API_KEY_FILE", raising=False)
    keyed = serve_arguments(secret_config(), "model:v1")
    plain = serve_arguments(load_config(PARAMS), "model:v1")
    monkeypatch.setenv("RATCHET_API_KEY", KEY)
    keyed_by_environment = serve_arguments(load_config(PARAMS), "model:v1")

    assert keyed["auth_required"] is True
    assert keyed_by_environment["auth_required"] is True
    assert plain["auth_required"] is False
    assert_no_secret(json.dumps(keyed))


async def answer(middleware: Any, path: str, headers: dict[str, str] | None = None) -> int:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    raw = [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await middleware({"type": "http", "path": path, "headers": raw}, receive, send)
    return int(sent[0]["status"])


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    status = 200 if scope.get("ratchet.authenticated") else 203
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_middleware_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.middleware import ApiKeyMiddleware

    monkeypatch.delenv("RATCHET_API_KEY_FILE", raising=False)
    monkeypatch.setenv("RATCHET_API_KEY", "")
    empty_only = ApiKeyMiddleware(ok_app)
    assert asyncio.run(answer(empty_only, "/classify")) == 503
    assert asyncio.run(answer(empty_only, "/healthz")) == 203  # liveness stays open

    monkeypatch.delenv("RATCHET_API_KEY")
    required = ApiKeyMiddleware(ok_app, auth_required=True)
    assert asyncio.run(answer(required, "/metadata")) == 503
    assert asyncio.run(answer(ApiKeyMiddleware(ok_app), "/metadata")) == 203  # open, anonymous

    monkeypatch.setenv("RATCHET_API_KEY", KEY)
    keyed = ApiKeyMiddleware(ok_app, auth_required=True)
    assert asyncio.run(answer(keyed, "/metadata")) == 401
    assert asyncio.run(answer(keyed, "/metadata", {"x-api-key": KEY})) == 200  # authenticated
