"""The Helm chart (deploy/helm/jobworker) renders valid objects that say what the worker
needs: probes on its metrics port, a grace period above SHUTDOWN_TIMEOUT, the image's
user, secrets only in a Secret, and no replica count of its own under KEDA.

Every rendered document is validated: the built-in kinds with kubernetes-validate
(strict: an unknown field fails), the two custom resources with the cut CRD schemas in
tests/deploy/schemas. Helm is built by ``tools/deploy/helm.sh`` (``make deploy-check``);
without it these tests skip, and fail on CI (CI=true).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "jobworker"
SCHEMAS = Path(__file__).parent / "schemas"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest
# kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
}
SECRET_SETTINGS = ("KAFKA_SASL_PASSWORD", "WEB_ACTION_TOKEN")

BASE: dict[str, Any] = {
    "config": {
        "KAFKA_BROKERS": "kafka-0.kafka:9092,kafka-1.kafka:9092",
        "GRPC_SERVER_ADDRESS": "core:50051",
    }
}
EVERYTHING: dict[str, Any] = {
    "config": {
        **BASE["config"],
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "jobworker",
        "SHUTDOWN_TIMEOUT": "2m",
    },
    "secrets": {"KAFKA_SASL_PASSWORD": "s3cret-sasl", "WEB_ACTION_TOKEN": "s3cret-token"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "keda": {"enabled": True, "maxReplicaCount": 24},
    "podDisruptionBudget": {"enabled": True},
    "web": {"enabled": True, "allowActions": True},
}
EXISTING_SECRET: dict[str, Any] = {
    **BASE,
    "existingSecret": "jobworker-credentials",
    "web": {"enabled": True, "allowActions": True},
}
VALUE_SETS = {"defaults": {}, "base": BASE, "everything": EVERYTHING, "existing": EXISTING_SECRET}

Render = Callable[..., subprocess.CompletedProcess[str]]


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def helm() -> str:
    binary = Path(os.environ.get("HELM", ROOT / ".cache" / "helm" / "bin" / "helm"))
    if not binary.is_file():
        reason = f"no helm at {binary}: `make deploy-check` builds it (tools/deploy/helm.sh)"
        if _ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return str(binary)


@pytest.fixture
def render(helm: str, tmp_path: Path) -> Render:
    def run(values: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
        values_file = tmp_path / "values.json"
        values_file.write_text(json.dumps(values), encoding="utf-8")
        command = [helm, "template", "jw", str(CHART), "--namespace", "jobs"]
        return subprocess.run(
            [*command, "--values", str(values_file), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; the API server refuses the object."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = sorted({str(key) for key in keys if keys.count(key) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"repeated keys {repeated}", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


def _objects(render: Render, values: dict[str, Any], *extra: str) -> list[dict[str, Any]]:
    done = render(values, *extra)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.load_all(done.stdout, Loader=_UniqueKeyLoader) if doc]


def _one(objects: list[dict[str, Any]], kind: str, component: str = "worker") -> dict[str, Any]:
    (found,) = (
        o
        for o in objects
        if o["kind"] == kind
        and o["metadata"]["labels"].get("app.kubernetes.io/component", component) == component
    )
    return found


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _refusal(render: Render, values: dict[str, Any]) -> str:
    done = render(values)
    assert done.returncode != 0, f"rendered, but should have refused:\n{done.stdout}"
    return done.stderr


def test_helm_lint_strict_passes_on_every_value_set(helm: str, tmp_path: Path) -> None:
    for name, values in VALUE_SETS.items():
        values_file = tmp_path / f"{name}.json"
        values_file.write_text(json.dumps(values), encoding="utf-8")
        done = subprocess.run(
            [helm, "lint", "--strict", str(CHART), "--values", str(values_file)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_object_is_valid(render: Render, name: str) -> None:
    for version in KUBERNETES_VERSIONS:
        objects = _objects(render, VALUE_SETS[name], "--kube-version", version)
        assert objects
        for obj in objects:
            where = f"{name}, Kubernetes {version}: {obj['kind']} {obj['metadata']['name']}"
            custom = CUSTOM_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
            if custom is None:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    pytest.fail(f"{where}: {error.message} at {list(error.path)}")
            else:
                schema = json.loads((SCHEMAS / custom).read_text(encoding="utf-8"))
                try:
                    jsonschema.validate(obj, schema)
                except jsonschema.ValidationError as error:
                    pytest.fail(f"{where}: {error.message} at {list(error.absolute_path)}")


def test_defaults_render_the_worker_alone(render: Render) -> None:
    kinds = sorted(o["kind"] for o in _objects(render, {}))
    # No Secret: nothing secret was given.
    assert kinds == ["ConfigMap", "Deployment", "Service"]


def test_everything_renders_every_optional_object(render: Render) -> None:
    kinds = sorted(o["kind"] for o in _objects(render, EVERYTHING))
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "PodDisruptionBudget",
        "ScaledObject",
        "Secret",
        "Service",
        "Service",
        "ServiceMonitor",
    ]


def test_probes_are_wired_to_the_metrics_server_on_every_interface(render: Render) -> None:
    objects = _objects(render, BASE)
    worker = _container(_one(objects, "Deployment"))
    assert worker["args"] == ["run"]
    assert worker["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert worker["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    config = _one(objects, "ConfigMap")["data"]
    assert config["METRICS_PORT"] == "9100"
    assert config["METRICS_HOST"] == "0.0.0.0"
    service = _one(objects, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}
    ]


@pytest.mark.parametrize(
    ("shutdown_timeout", "processes", "grace"),
    [
        (None, None, 45),  # the worker's default, 30s, + 15
        ("2m", None, 135),
        ("90500ms", None, 106),  # rounded up to whole seconds
        ("1.5m", "4", 115),  # + 10 s for the --processes supervisor
    ],
)
def test_grace_period_is_derived_above_the_shutdown_timeout(
    render: Render, shutdown_timeout: str | None, processes: str | None, grace: int
) -> None:
    config = dict(BASE["config"])
    if shutdown_timeout is not None:
        config["SHUTDOWN_TIMEOUT"] = shutdown_timeout
    if processes is not None:
        config["WORKER_PROCESSES"] = processes
    deployment = _one(_objects(render, {"config": config}), "Deployment")
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace


def test_a_grace_period_above_the_shutdown_timeout_is_kept(render: Render) -> None:
    deployment = _one(_objects(render, {**BASE, "terminationGracePeriodSeconds": 31}), "Deployment")
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 31


@pytest.mark.parametrize("grace", [30, 10])
def test_a_grace_period_not_above_the_shutdown_timeout_fails_to_render(
    render: Render, grace: int
) -> None:
    stderr = _refusal(render, {**BASE, "terminationGracePeriodSeconds": grace})
    assert f"terminationGracePeriodSeconds ({grace}) must be above 30 s" in stderr


def test_the_supervisors_margin_counts_with_several_processes(render: Render) -> None:
    config = {**BASE["config"], "WORKER_PROCESSES": "2"}
    stderr = _refusal(render, {"config": config, "terminationGracePeriodSeconds": 40})
    assert "must be above 40 s" in stderr
    assert "WORKER_PROCESSES > 1" in stderr


@pytest.mark.parametrize("written", ["30", "thirty seconds", "30 sec"])
def test_a_shutdown_timeout_the_worker_would_refuse_fails_to_render(
    render: Render, written: str
) -> None:
    stderr = _refusal(render, {"config": {**BASE["config"], "SHUTDOWN_TIMEOUT": written}})
    assert "is not a duration: write it with a unit" in stderr


def test_pods_run_as_the_images_user_with_nothing_to_spare(render: Render) -> None:
    for deployment in (o for o in _objects(render, EVERYTHING) if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        context = _container(deployment)["securityContext"]
        assert context["runAsNonRoot"] is True
        assert (context["runAsUser"], context["runAsGroup"]) == (10001, 10001)
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        # A read-only root: /tmp is a volume of the pod's own.
        mounts = {m["mountPath"]: m["name"] for m in _container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/tmp"]] == {"name": mounts["/tmp"], "emptyDir": {}}
        assert pod["enableServiceLinks"] is False


def test_secrets_live_in_the_secret_never_in_the_configmap(render: Render) -> None:
    objects = _objects(render, EVERYTHING)
    config = _one(objects, "ConfigMap")["data"]
    secret = _one(objects, "Secret")
    assert set(secret["stringData"]) == set(SECRET_SETTINGS)
    for name in SECRET_SETTINGS:
        assert name not in config
    rendered_config = json.dumps(config)
    for value in EVERYTHING["secrets"].values():
        assert value not in rendered_config
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        assert _container(deployment)["envFrom"] == [
            {"configMapRef": {"name": "jw-jobworker"}},
            {"secretRef": {"name": "jw-jobworker"}},
        ]


@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_a_secret_setting_in_config_fails_to_render(render: Render, name: str) -> None:
    stderr = _refusal(render, {"config": {**BASE["config"], name: "oops"}})
    assert f"config.{name} is a secret setting" in stderr


def test_an_existing_secret_is_read_and_none_is_made(render: Render) -> None:
    objects = _objects(render, EXISTING_SECRET)
    assert "Secret" not in {o["kind"] for o in objects}
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        assert {"secretRef": {"name": "jobworker-credentials"}} in _container(deployment)["envFrom"]


def test_secrets_and_an_existing_secret_together_fail_to_render(render: Render) -> None:
    values = {**EXISTING_SECRET, "secrets": {"KAFKA_SASL_PASSWORD": "x"}}
    assert "either secrets or existingSecret" in _refusal(render, values)


def test_a_settings_change_rolls_the_pods(render: Render) -> None:
    def checksum(values: dict[str, Any]) -> str:
        pod = _one(_objects(render, values), "Deployment")["spec"]["template"]
        return str(pod["metadata"]["annotations"]["checksum/config"])

    changed = {"config": {**BASE["config"], "WORKER_POOL_SIZE": "50"}}
    assert re.fullmatch(r"[0-9a-f]{64}", checksum(BASE))
    assert checksum(BASE) != checksum(changed)


def test_keda_owns_the_replica_count(render: Render) -> None:
    without = _one(_objects(render, BASE), "Deployment")
    assert without["spec"]["replicas"] == 2
    objects = _objects(render, EVERYTHING)
    assert "replicas" not in _one(objects, "Deployment")["spec"]
    scaled = _one(objects, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"] == {"name": "jw-jobworker"}
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 24)
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    # The query docs/operations.md gives: the backlog, not the lag.
    assert trigger["metadata"]["query"] == 'sum(jobworker_backlog{topic="job_requests"})'
    assert trigger["metadata"]["threshold"] == "500"


def test_the_backlog_query_follows_the_jobs_topic(render: Render) -> None:
    values = {"config": {**BASE["config"], "KAFKA_TOPIC": "thumbnails"}, "keda": {"enabled": True}}
    (trigger,) = _one(_objects(render, values), "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["query"] == 'sum(jobworker_backlog{topic="thumbnails"})'


def test_the_service_monitor_scrapes_the_metrics_port(render: Render) -> None:
    monitor = _one(_objects(render, EVERYTHING), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = _one(_objects(render, EVERYTHING), "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


def test_the_web_console_listens_on_every_interface_with_actions_on(render: Render) -> None:
    objects = _objects(render, EVERYTHING)
    web = _one(objects, "Deployment", component="web")
    assert web["spec"]["replicas"] == 1
    console = _container(web)
    assert console["args"] == ["web", "--allow-actions"]
    assert {"name": "WEB_HOST", "value": "0.0.0.0"} in console["env"]
    assert {"name": "WEB_PORT", "value": "8088"} in console["env"]
    assert console["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = _one(objects, "Service", component="web")
    assert service["spec"]["ports"][0]["port"] == 8088
    without_actions = {**BASE, "web": {"enabled": True}}
    plain = _one(_objects(render, without_actions), "Deployment", component="web")
    assert _container(plain)["args"] == ["web"]


def test_web_actions_without_a_token_fail_to_render(render: Render) -> None:
    values = {**BASE, "web": {"enabled": True, "allowActions": True}}
    assert "web.allowActions needs WEB_ACTION_TOKEN" in _refusal(render, values)
    values["secrets"] = {"KAFKA_SASL_PASSWORD": "only this one"}
    assert "web.allowActions needs WEB_ACTION_TOKEN" in _refusal(render, values)


def test_an_unknown_value_fails_to_render(render: Render) -> None:
    # values.schema.json: a misspelt key is an error, not a silently ignored setting.
    assert "existingSecrets" in _refusal(render, {"existingSecrets": "x"})
