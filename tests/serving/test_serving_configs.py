"""serving/ holds config for the official tensorflow_model_server: parse each file with the real protos."""

import re
from pathlib import Path

from google.protobuf import text_format

from tfattr import signatures as sig
from tfattr.serve import BatchConfig, batching_parameters_class, monitoring_config_class

SERVING = Path(__file__).resolve().parents[2] / "serving"


def _parse(name, message_class):
    return text_format.Parse((SERVING / name).read_text(), message_class())


def test_models_config_parses_as_model_server_config():
    from tensorflow_serving.config import model_server_config_pb2

    config = _parse("models.config", model_server_config_pb2.ModelServerConfig)
    [model] = config.model_config_list.config
    assert model.name == sig.MODEL_NAME
    assert model.base_path == "/models/tfattr"
    assert model.model_platform == "tensorflow"


def test_batching_parameters_parse_and_are_sane():
    params = _parse("batching_parameters.txt", batching_parameters_class())
    assert params.DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                  "num_batch_threads"):
        assert params.HasField(field), field
    config = BatchConfig.from_file(SERVING / "batching_parameters.txt")
    assert config.max_batch_size == params.max_batch_size.value >= 1
    assert config.num_batch_threads == params.num_batch_threads.value >= 1


def test_monitoring_config_enables_prometheus():
    config = _parse("monitoring.config", monitoring_config_class())
    assert config.DESCRIPTOR.full_name == "tensorflow.serving.MonitoringConfig"
    assert config.prometheus_config.enable
    assert config.prometheus_config.path.startswith("/")


def test_docker_compose_flags_point_to_mounted_config_files():
    text = (SERVING / "docker-compose.yml").read_text()
    assert re.search(r"image:\s*tensorflow/serving", text)
    mounts = dict(re.findall(r"-\s*(\./[\w.]+):(/config/[\w.]+)(?::ro)?\s*$", text, re.M))
    mounted = {container: host for host, container in mounts.items()}
    flags = dict(re.findall(r"--(\w+)=(\S+)", text))
    for flag, name in [("model_config_file", "models.config"),
                       ("batching_parameters_file", "batching_parameters.txt"),
                       ("monitoring_config_file", "monitoring.config")]:
        container_path = flags[flag]
        assert container_path in mounted, f"--{flag}={container_path} is not mounted"
        assert mounted[container_path] == f"./{name}"
        assert (SERVING / name).exists()
    assert flags["enable_batching"] == "true"
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    assert re.search(r'"8500:8500"', text) and re.search(r'"8501:8501"', text)
    # The models volume must put the base path of models.config inside the container.
    assert re.search(r"-\s*\S*models\S*:/models(?::ro)?\s*$", text, re.M)
