"""Configuration: the example loads, bad keys are named, the environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.nats.subjects import Subjects, decode_token, name_token, subject_token
from schemas.settings import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_committed_example_loads() -> None:
    config = load_config(ROOT / "promptbus.yaml", env={})
    mock = config.model("mock-gpt")
    assert mock is not None and mock.deployments[0].provider == "mock"
    assert config.ingress.port == 8080 and config.nats.url is None


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (
            "model_list: [{model_name: a, deployments: [{provider: mock, max_concurency: 3}]}]",
            ["max_concurency", "deployments[0]"],
        ),
        (
            "model_list: [{model_name: a, deployments: [{provider: mock, max_concurrency: 0}]}]",
            ["max_concurrency"],
        ),
        ("model_list: [{model_name: a, deployments: [{provider: openai}]}]", ["base_url"]),
        ("model_list: [{model_name: a, deployments: [{provider: bedrock}]}]", ["provider"]),
        ("model_list: [{model_name: a, deployments: []}]", ["deployments"]),
        ("nats: {prot: 1}\nmodel_list: []", ["prot", "$.nats"]),
        (
            "model_list: [{model_name: a, deployments: [{provider: mock}]},"
            " {model_name: a, deployments: [{provider: mock}]}]",
            ["duplicate model_name `a`"],
        ),
        ("ingress: {port: http}\nmodel_list: []", ["ingress.port"]),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, names: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    for name in names:
        assert name in str(err.value)
    assert str(path) in str(err.value)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model_list: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", env={})


def test_environment_overrides(tmp_path: Path) -> None:
    config = load_config(
        ROOT / "promptbus.yaml",
        env={"PROMPTBUS__NATS__URL": "nats://10.0.0.1:4222", "PROMPTBUS__INGRESS__PORT": "9001"},
    )
    assert config.nats.url == "nats://10.0.0.1:4222"
    assert config.ingress.port == 9001
    with pytest.raises(ConfigError, match=r"ingress\.port"):
        load_config(ROOT / "promptbus.yaml", env={"PROMPTBUS__INGRESS__PORT": "many"})


def test_deployment_defaults() -> None:
    config = load_config(ROOT / "promptbus.yaml", env={})
    mock = config.model("mock-gpt")
    assert mock is not None
    assert mock.deployments[0].name == "mock-gpt/0" and mock.deployments[0].model == "mock-gpt"


def test_model_tokens_are_single_nats_tokens() -> None:
    assert subject_token("gpt-4o") == "gpt-4o"
    assert subject_token("llama3.1:8b") == "llama3%2E1:8b"
    assert subject_token("a b*c>d%") == "a%20b%2Ac%3Ed%25"
    assert subject_token("mock-gpt/0") == "mock-gpt/0"
    assert name_token("team/a.b") == "team%2Fa%2Eb" and name_token("") == "-"
    for name in ("llama3.1:8b", "a b*c>d%", "team/a.b", "ünï"):
        assert decode_token(name_token(name)) == name == decode_token(subject_token(name))
    subjects = Subjects("pb", "PB_REQUESTS")
    assert subjects.chat("openai/gpt-4.1") == "pb.chat.openai/gpt-4%2E1"
    name = subjects.chat_consumer("openai/gpt-4.1")
    assert all(ch.isalnum() or ch in "_-" for ch in name)
    assert subjects.chat_consumer("a.b") != subjects.chat_consumer("a_b")


def test_prices_come_from_deployment_then_config_then_builtin_table(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        """
prices:
  gpt-4o: {input_per_mtok: 1.0, output_per_mtok: 2.0}
model_list:
  - model_name: explicit
    deployments:
      - {provider: mock, model: gpt-4o, input_cost_per_mtok: 9, output_cost_per_mtok: 0}
  - model_name: configured
    deployments: [{provider: mock, model: gpt-4o}]
  - model_name: listed
    deployments: [{provider: mock, model: gpt-4o-mini}]
  - model_name: unknown
    deployments: [{provider: mock}]
"""
    )
    config = load_config(path)

    def prices(model: str) -> tuple[float | None, float | None]:
        found = config.model(model)
        assert found is not None
        deployment = found.deployments[0]
        return deployment.input_cost_per_mtok, deployment.output_cost_per_mtok

    assert prices("explicit") == (9, 0)  # explicit zero stays zero
    assert prices("configured") == (1.0, 2.0)
    assert prices("listed") == (0.15, 0.60)  # schemas/prices.py
    assert prices("unknown") == (0.0, 0.0)
