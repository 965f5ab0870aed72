"""Config validation (unit, no server): bad input is a one-line ConfigError naming the field and a fix."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from rolegraph.config import (
    BUILTIN_MODEL,
    DEFAULT_ROLES,
    EndpointConfig,
    LaunchSpec,
    apply_role_overrides,
    default_config,
    load_config,
)
from rolegraph.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_default_config_launches_the_builtin_model_for_every_role() -> None:
    config = default_config()
    assert set(config.roles) == set(DEFAULT_ROLES)
    launch = config.endpoints["local"].launch
    assert launch is not None and launch.model == BUILTIN_MODEL
    assert launch.dtype == "float32" and launch.enforce_eager and launch.enable_lora
    assert pickle.loads(pickle.dumps(config)) == config  # configs travel to worker processes


def test_a_valid_file_loads_with_defaults_filled_in(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
endpoints:
  remote: {base_url: "http://127.0.0.1:8000/v1", max_concurrency: 8}
roles:
  solver: {endpoint: remote, model: my-adapter, sampling: {temperature: 0, max_tokens: 32}}
""",
    )
    config = load_config(path)
    assert config.endpoints["remote"].max_concurrency == 8
    assert config.roles["solver"].model == "my-adapter"
    assert config.roles["solver"].sampling.max_tokens == 32


def test_roles_default_to_the_first_endpoint(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "endpoints:\n  a: {base_url: 'http://127.0.0.1:9/v1'}\n"))
    assert set(config.roles) == set(DEFAULT_ROLES)
    assert {b.endpoint for b in config.roles.values()} == {"a"}


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("endpoints:\n  a: {}\n", ["endpoints.a", "base_url"]),
        ("endpoints:\n  a: {base_url: x, launch: {}}\n", ["endpoints.a", "exactly one"]),
        (
            "endpoints:\n  a: {base_url: x}\nroles:\n  solver: {endpoint: b}\n",
            ["solver", "unknown endpoint 'b'"],
        ),
        ("endpoints:\n  a: {launch: {port: 70000}}\n", ["endpoints.a.launch.port"]),
        ("endpoints:\n  a: {launch: {device: tpu}}\n", ["endpoints.a.launch.device"]),
        ("endpoints:\n  a: {base_url: x, colour: red}\n", ["endpoints.a.colour"]),
        (
            "endpoints:\n  a: {base_url: x}\nroles:\n  s: {endpoint: a, sampling: {max_tokens: 0}}\n",
            ["roles.s.sampling.max_tokens"],
        ),
        ("endpoints:\n  a: {base_url: []}\n", ["endpoints.a.base_url", "at least one"]),
        ("endpoints:\n  a: {base_url: [x, 5]}\n", ["endpoints.a.base_url", "list of replica URLs"]),
        ("endpoints:\n  a: {base_url: [x/v1, x/]}\n", ["endpoints.a.base_url", "listed twice"]),
        ("endpoints:\n  a: {launch: {replicas: 0}}\n", ["endpoints.a.launch.replicas"]),
        ("endpoints:\n  a: {launch: {port: 65535, replicas: 2}}\n", ["endpoints.a.launch", "65535"]),
        ("endpoints:\n  a: {launch: {num_gpus: 0}}\n", ["endpoints.a.launch.num_gpus"]),
        ("endpoints: [1, 2\n", ["not valid YAML", "line"]),
        ("- just\n- a list\n", ["expected a mapping"]),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_field(tmp_path: Path, text: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    assert info.value.hint  # every error says how to fix it
    for name in names:
        assert name in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_role_overrides_rebind_and_reject_unknown_endpoints() -> None:
    # `critic` is known here because a graph (examples/critique) declares it.
    config = apply_role_overrides(
        default_config(), ["solver=local:solver-v3", "critic=local"], known_roles=["critic"]
    )
    assert config.roles["solver"].model == "solver-v3"
    assert config.roles["critic"].endpoint == "local" and config.roles["critic"].model is None
    with pytest.raises(ConfigError, match="unknown endpoint 'far'"):
        apply_role_overrides(default_config(), ["solver=far:x"])
    with pytest.raises(ConfigError, match="ROLE=ENDPOINT:MODEL"):
        apply_role_overrides(default_config(), ["solver"])


def test_role_overrides_reject_roles_nobody_defines(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        apply_role_overrides(default_config(), ["sovler=local"])
    assert "unknown role 'sovler'" in info.value.message
    assert info.value.hint is not None and "solver" in info.value.hint  # the known roles are listed
    # A role the config file binds is known even though no built-in role has its name.
    path = _write(
        tmp_path, "endpoints:\n  a: {base_url: 'http://127.0.0.1:9/v1'}\nroles:\n  critic: {endpoint: a}\n"
    )
    assert load_config(path, ["critic=a:critic-v2"]).roles["critic"].model == "critic-v2"


def test_train_section_sets_the_trainers_device(tmp_path: Path) -> None:
    assert default_config().train.device == "cpu" and not default_config().train.bf16
    config = load_config(_write(tmp_path, "train: {device: gpu, bf16: true}\n"))
    assert config.train.device == "gpu" and config.train.bf16
    assert set(config.roles) == set(DEFAULT_ROLES)  # a file with only `train` keeps the defaults
    with pytest.raises(ConfigError, match=r"train\.device"):
        load_config(_write(tmp_path, "train: {device: tpu}\n"))
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(_write(tmp_path, "train: {epochs: 3}\n"))


def test_schema_objects_reject_bad_values_directly() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        EndpointConfig()
    with pytest.raises(ValueError):
        LaunchSpec(kv_cache_gib=0)


def test_an_endpoint_may_list_replicas_or_launch_several(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
endpoints:
  one: {base_url: "http://127.0.0.1:8000/v1"}
  two: {base_url: ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"]}
  launched: {launch: {replicas: 3, port: 9000, device: gpu, num_gpus: 2}}
""",
    )
    config = load_config(path)
    assert config.endpoints["one"].base_url == "http://127.0.0.1:8000/v1"  # unchanged for existing code
    assert config.endpoints["two"].replica_urls == ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"]
    launch = config.endpoints["launched"].launch
    assert launch is not None and (launch.replicas, launch.num_gpus) == (3, 2)
    assert config.endpoints["launched"].replica_urls == []
    assert LaunchSpec().replicas == 1 and LaunchSpec().num_gpus is None
    assert pickle.loads(pickle.dumps(config)) == config
