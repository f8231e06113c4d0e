"""The Helm chart renders valid Kubernetes for every example value set, drains voice sessions
before a pod is killed, runs migrations before new pods, and refuses bad values with a clear message.

Rendered by a real helm (tests/support/helm.py) and checked offline against the Kubernetes 1.30
JSON schemas in strict mode (unknown fields are errors); CRD kinds have no bundled schema.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.app import healthz, readyz
from tests.support.helm import (
    CHART,
    FETCH_HINT,
    KUBE_VERSION,
    REPO,
    VALUE_SETS,
    Helm,
    container,
    env,
    find_helm,
    of_kind,
    only,
    secret_data,
    value_set,
)

ALL_VALUE_SETS = sorted(VALUE_SETS.glob("*-values.yaml"))
CRD_KINDS = {"ServiceMonitor", "HTTPRoute"}  # Prometheus Operator and Gateway API CRDs
DEFAULT = value_set("default")


@pytest.fixture(scope="session")
def helm() -> Helm:
    binary = find_helm()
    if binary is None:
        message = f"no helm binary for the chart tests: {FETCH_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Helm(binary)


def server(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return only(manifests, "Deployment", "server")


def migrate_job(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return only(manifests, "Job", "migrate")


def test_every_value_set_is_exercised() -> None:
    names = {p.name.removesuffix("-values.yaml") for p in ALL_VALUE_SETS}
    assert {
        "default",
        "autoscaling",
        "existing-secret",
        "monitoring",
        "ingress",
        "gateway-route",
        "gitops",
        "tls",
    } <= names


@pytest.mark.parametrize("values", ALL_VALUE_SETS, ids=lambda p: p.stem)
def test_the_chart_lints_strictly(helm: Helm, values: Path) -> None:
    done = helm.lint([values])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", ALL_VALUE_SETS, ids=lambda p: p.stem)
def test_every_manifest_is_valid_kubernetes(helm: Helm, values: Path) -> None:
    manifests = helm.template([values])
    assert manifests
    for manifest in manifests:
        if manifest["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as invalid:
            pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {invalid.message} at {list(invalid.path)}")


@pytest.mark.parametrize("values", ALL_VALUE_SETS, ids=lambda p: p.stem)
def test_every_pod_meets_the_restricted_pod_security_profile(helm: Helm, values: Path) -> None:
    manifests = helm.template([values])
    for workload in [server(manifests), *of_kind(manifests, "Job")]:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["runAsNonRoot"] is True
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
        # Writable paths are volumes only.
        mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts


def test_probes_use_the_gateways_health_routes(helm: Helm) -> None:
    c = container(server(helm.template([DEFAULT])))
    (live,) = healthz.paths
    (ready,) = readyz.paths
    assert c["livenessProbe"]["httpGet"] == {"path": live, "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": live, "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": ready, "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert env(server(helm.template([DEFAULT])))["VOXGATE_PORT"]["value"] == "8000"


@pytest.mark.parametrize("values", ALL_VALUE_SETS, ids=lambda p: p.stem)
def test_a_terminating_pod_drains_before_kubernetes_kills_it(helm: Helm, values: Path) -> None:
    deployment = server(helm.template([values]))
    pod, c, variables = deployment["spec"]["template"]["spec"], container(deployment), env(deployment)
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    grace = float(variables["VOXGATE_SHUTDOWN_GRACE_SECONDS"]["value"])
    abandon = float(variables["VOXGATE_ABANDON_WAIT_SECONDS"]["value"])
    # The drain, the billed wait for cancelled responses, then >= 15 s to flush the ledger and exit.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + abandon + 15
    assert grace >= 300, "voice sessions need minutes, not the process default of 10 s"


def test_the_default_grace_outlasts_the_packaged_tiers_longest_session(helm: Helm) -> None:
    tiers = yaml.safe_load((REPO / "gateway" / "default_tiers.yaml").read_text())["tiers"]
    longest = max(t.get("max_session_seconds") or 0 for t in tiers.values())
    grace = float(env(server(helm.template([DEFAULT])))["VOXGATE_SHUTDOWN_GRACE_SECONDS"]["value"])
    assert grace >= longest


def test_a_grace_period_too_short_to_drain_is_refused(helm: Helm) -> None:
    error = helm.refusal([DEFAULT], {"terminationGracePeriodSeconds": "60"})
    assert "terminationGracePeriodSeconds=60 is too short to drain" in error
    assert "= 925" in error  # 5 preStop + 900 grace + 5 abandon wait + 15


def test_rollouts_never_go_below_the_desired_count(helm: Helm) -> None:
    spec = server(helm.template([DEFAULT]))["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] not in (0, "0%")
    assert spec["minReadySeconds"] > 0


def test_migrations_run_in_a_hook_job_before_install_and_upgrade(helm: Helm) -> None:
    manifests = helm.template([DEFAULT])
    job = migrate_job(manifests)
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    assert container(job)["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert container(job)["image"] == container(server(manifests))["image"]
    # The release's Secret does not exist yet in a pre-install hook: the DSN comes from a hook
    # Secret created first (lower weight) and deleted once the hooks succeed.
    ref = env(job)["VOXGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    hook_secret = next(s for s in of_kind(manifests, "Secret") if s["metadata"]["name"] == ref["name"])
    hook = hook_secret["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert "hook-succeeded" in hook["helm.sh/hook-delete-policy"]
    assert secret_data(hook_secret) == {"VOXGATE_DATABASE_URL": "postgresql://voxgate:change-me@postgres:5432/voxgate"}
    # Nothing else it needs to see (the migration URL is optional: absent, VOXGATE_DATABASE_URL serves).
    assert set(env(job)) == {"VOXGATE_DATABASE_URL", "VOXGATE_DATABASE_MIGRATION_URL", "VOXGATE_LOG_FORMAT"}
    migration = env(job)["VOXGATE_DATABASE_MIGRATION_URL"]["valueFrom"]["secretKeyRef"]
    assert (migration["name"], migration["optional"]) == (ref["name"], True)


def test_without_helm_hooks_the_migration_job_is_plain_and_named_per_revision(helm: Helm) -> None:
    manifests = helm.template([value_set("gitops")])
    job = migrate_job(manifests)
    assert "annotations" not in job["metadata"]
    assert re.fullmatch(r"vg-voxgate-migrate-\d+", job["metadata"]["name"])
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert env(job)["VOXGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "voxgate-credentials"
    assert not of_kind(manifests, "Secret")


def test_migrations_can_be_left_to_the_operator(helm: Helm) -> None:
    assert not of_kind(helm.template([DEFAULT], {"migrations.enabled": "false"}), "Job")


def test_with_autoscaling_the_hpa_owns_the_replica_count(helm: Helm) -> None:
    manifests = helm.template([value_set("autoscaling")])
    assert "replicas" not in server(manifests)["spec"]
    hpa = only(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vg-voxgate"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 30)
    sessions, cpu = hpa["spec"]["metrics"]
    assert sessions["type"] == "Pods"
    assert sessions["pods"]["metric"]["name"] == "voxgate_live_sessions"
    assert sessions["pods"]["target"] == {"type": "AverageValue", "averageValue": "150"}
    assert cpu["resource"]["name"] == "cpu" and cpu["resource"]["target"]["type"] == "Utilization"
    # Each removed pod drains its sessions: scale down one pod at a time.
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]


def test_cpu_alone_drives_autoscaling_without_the_prometheus_adapter(helm: Helm) -> None:
    (metric,) = only(helm.template([value_set("cpu-autoscaling")]), "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"


def test_without_autoscaling_the_deployment_sets_replicas(helm: Helm) -> None:
    manifests = helm.template([DEFAULT])
    assert server(manifests)["spec"]["replicas"] == 2
    assert not of_kind(manifests, "HorizontalPodAutoscaler")


def test_a_created_secret_holds_the_credentials_and_they_never_appear_in_plain_env(helm: Helm) -> None:
    manifests = helm.template([DEFAULT])
    secret = next(s for s in of_kind(manifests, "Secret") if s["metadata"]["name"] == "vg-voxgate")
    data = secret_data(secret)
    assert data["VOXGATE_OPENAI_API_KEY"] == "sk-test-not-a-real-key"
    assert len(data["VOXGATE_SAFETY_ID_SECRET"]) >= 32  # generated: stable ids need one shared key
    deployment = server(manifests)
    for name in ("VOXGATE_DATABASE_URL", "VOXGATE_REDIS_URL", "VOXGATE_OPENAI_API_KEY", "VOXGATE_SAFETY_ID_SECRET"):
        assert env(deployment)[name]["valueFrom"]["secretKeyRef"]["name"] == "vg-voxgate"
    plain = " ".join(str(v.get("value", "")) for v in env(deployment).values())
    for value in data.values():
        assert value not in plain


# The whsec_ secrets are optional: absent from the chart's Secret unless given, and read from it when given.
WEBHOOK_SECRETS = {
    "VOXGATE_ALERT_WEBHOOK_SECRET": "alertWebhookSecret",
    "VOXGATE_OPENAI_WEBHOOK_SECRET": "openaiWebhookSecret",
}


def test_webhook_secrets_go_in_the_created_secret_only_when_given(helm: Helm) -> None:
    def release_secret(manifests: list[dict[str, Any]]) -> dict[str, str]:
        return secret_data(next(s for s in of_kind(manifests, "Secret") if s["metadata"]["name"] == "vg-voxgate"))

    assert not set(WEBHOOK_SECRETS) & set(release_secret(helm.template([DEFAULT])))
    given = {name: "whsec_" + "QUJD" * 8 + str(i) for i, name in enumerate(WEBHOOK_SECRETS)}  # distinct values
    manifests = helm.template(
        [DEFAULT], {f"secrets.values.{key}": given[name] for name, key in WEBHOOK_SECRETS.items()}
    )
    data = release_secret(manifests)
    variables = env(server(manifests))
    plain = " ".join(str(v.get("value", "")) for v in variables.values())
    for name in WEBHOOK_SECRETS:
        assert data[name] == given[name]
        ref = variables[name]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"], ref["optional"]) == ("vg-voxgate", name, True)
        assert given[name] not in plain
    assert not set(WEBHOOK_SECRETS) & set(env(migrate_job(manifests)))  # the migration Job needs neither


def test_an_existing_secret_is_read_by_its_key_names_and_none_is_created(helm: Helm) -> None:
    manifests = helm.template([value_set("existing-secret")])
    assert not of_kind(manifests, "Secret")
    variables = env(server(manifests))
    expected = {
        "VOXGATE_DATABASE_URL": ("database-url", False),
        "VOXGATE_REDIS_URL": ("redis-url", False),
        "VOXGATE_OPENAI_API_KEY": ("openai-api-key", False),
        "VOXGATE_SAFETY_ID_SECRET": ("safety-id-secret", True),
        "VOXGATE_ADMIN_JWT_SECRET": ("admin-jwt-secret", True),
        "VOXGATE_ADMIN_JWT_PUBLIC_KEY": ("admin-jwt-public-key", True),
        "VOXGATE_ALERT_WEBHOOK_SECRET": ("alert-webhook-secret", True),
        "VOXGATE_OPENAI_WEBHOOK_SECRET": ("openai-webhook-secret", True),
    }
    for name, (key, optional) in expected.items():
        ref = variables[name]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"], ref.get("optional", False)) == ("voxgate-credentials", key, optional)
    assert env(migrate_job(manifests))["VOXGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "database-url"
    migration = env(migrate_job(manifests))["VOXGATE_DATABASE_MIGRATION_URL"]["valueFrom"]["secretKeyRef"]
    assert (migration["name"], migration["key"], migration["optional"]) == (
        "voxgate-credentials",
        "database-migration-url",
        True,
    )
    assert container(server(manifests))["image"].endswith("@sha256:" + "0" * 64)


def test_every_variable_the_chart_sets_is_one_voxgate_reads(helm: Helm) -> None:
    settings = (REPO / "gateway" / "settings.py").read_text()
    for values in ALL_VALUE_SETS:
        for name in env(server(helm.template([values]))):
            assert f'"{name}"' in settings, f"{values.name}: {name} is not a voxgate setting"


def test_the_spool_dir_is_a_volume(helm: Helm) -> None:
    deployment = server(helm.template([DEFAULT]))
    spool = env(deployment)["VOXGATE_SPOOL_DIR"]["value"]
    mount = next(m for m in container(deployment)["volumeMounts"] if m["mountPath"] == spool)
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"]["sizeLimit"] == "1Gi"
    claimed = server(helm.template([value_set("gateway-route")]))["spec"]["template"]["spec"]["volumes"]
    assert {"name": "spool", "persistentVolumeClaim": {"claimName": "voxgate-spool"}} in claimed


def test_a_tiers_file_is_mounted_as_the_policy_file(helm: Helm) -> None:
    manifests = helm.template([value_set("ingress")])
    path = env(server(manifests))["VOXGATE_POLICY_FILE"]["value"]
    config = only(manifests, "ConfigMap")
    assert "max_session_seconds: 600" in config["data"][Path(path).name]
    mount = next(m for m in container(server(manifests))["volumeMounts"] if m["name"] == "tiers")
    assert path.startswith(mount["mountPath"] + "/") and mount["readOnly"] is True


def test_disruption_budget_spread_and_service_select_only_server_pods(helm: Helm) -> None:
    manifests = helm.template([DEFAULT])
    pod_labels = server(manifests)["spec"]["template"]["metadata"]["labels"]
    job_labels = migrate_job(manifests)["spec"]["template"]["metadata"]["labels"]
    selectors = [
        only(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        only(manifests, "Service")["spec"]["selector"],
        *(
            t["labelSelector"]["matchLabels"]
            for t in server(manifests)["spec"]["template"]["spec"]["topologySpreadConstraints"]
        ),
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items()
        assert not selector.items() <= job_labels.items()
    assert only(manifests, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    spread = server(manifests)["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {t["topologyKey"] for t in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


def test_service_monitor_and_network_policy_are_opt_in(helm: Helm) -> None:
    assert not of_kind(helm.template([DEFAULT]), "ServiceMonitor")
    assert not of_kind(helm.template([DEFAULT]), "NetworkPolicy")
    manifests = helm.template([value_set("monitoring")])
    monitor = only(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # /metrics needs the token (its counters carry tenant ids and spend); the monitor sends the pods' own.
    bearer = {"type": "Bearer", "credentials": {"name": "vg-voxgate", "key": "VOXGATE_METRICS_TOKEN"}}
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s", "authorization": bearer}
    ]
    token = env(server(manifests))["VOXGATE_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (token["name"], token["key"]) == ("vg-voxgate", "VOXGATE_METRICS_TOKEN")
    created = secret_data(next(s for s in of_kind(manifests, "Secret") if s["metadata"]["name"] == "vg-voxgate"))
    assert len(created["VOXGATE_METRICS_TOKEN"]) >= 32  # generated when not given
    assert monitor["spec"]["selector"]["matchLabels"].items() <= server(manifests)["metadata"]["labels"].items()
    policy = only(manifests, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}] and len(ingress["from"]) == 2
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule.get("ports", [])}
    assert {(53, "UDP"), (5432, "TCP"), (6379, "TCP"), (443, "TCP"), (4318, "TCP")} <= egress_ports


def test_an_ingress_routes_to_the_service_with_websocket_timeouts(helm: Helm) -> None:
    manifests = helm.template([value_set("ingress")])
    ingress = only(manifests, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"]["service"] == {"name": "vg-voxgate", "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"secretName": "voxgate-tls", "hosts": ["voxgate.example.com"]}]


def test_a_gateway_api_route_turns_request_timeouts_off(helm: Helm) -> None:
    manifests = helm.template([value_set("gateway-route")])
    route = only(manifests, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public-gateway", "namespace": "gateway-system"}]
    (rule,) = route["spec"]["rules"]
    assert rule["timeouts"] == {"request": "0s", "backendRequest": "0s"}
    assert rule["backendRefs"] == [
        {"name": "vg-voxgate", "port": only(manifests, "Service")["spec"]["ports"][0]["port"]}
    ]


def test_the_migration_job_migrates_through_the_direct_url_when_one_is_given(helm: Helm) -> None:
    direct = "postgresql://voxgate:change-me@postgres:5432/voxgate"
    manifests = helm.template([value_set("tls")])
    job = migrate_job(manifests)
    ref = env(job)["VOXGATE_DATABASE_MIGRATION_URL"]["valueFrom"]["secretKeyRef"]
    hook_secret = next(s for s in of_kind(manifests, "Secret") if s["metadata"]["name"] == ref["name"])
    assert "helm.sh/hook" in hook_secret["metadata"]["annotations"]
    assert secret_data(hook_secret)[ref["key"]] == direct
    assert secret_data(hook_secret)["VOXGATE_DATABASE_URL"] == "postgresql://voxgate:change-me@pgbouncer:6432/voxgate"
    # The server pods never get it: `serve` does not migrate in the chart.
    assert "VOXGATE_DATABASE_MIGRATION_URL" not in env(server(manifests))
    # Without Helm hooks, the plain Job reads it from the release's own Secret.
    plain = helm.template([value_set("tls")], {"migrations.useHelmHooks": "false"})
    ref = env(migrate_job(plain))["VOXGATE_DATABASE_MIGRATION_URL"]["valueFrom"]["secretKeyRef"]
    release_secret = next(s for s in of_kind(plain, "Secret") if s["metadata"]["name"] == ref["name"])
    assert ref["name"] == "vg-voxgate" and secret_data(release_secret)[ref["key"]] == direct
    # Not given: the created Secrets carry no such key (the Job falls back to VOXGATE_DATABASE_URL).
    for secret in of_kind(helm.template([DEFAULT]), "Secret"):
        assert "VOXGATE_DATABASE_MIGRATION_URL" not in secret_data(secret)


def test_behind_pgbouncer_the_migration_job_must_bypass_it(helm: Helm, tmp_path: Path) -> None:
    """VOXGATE_DATABASE_PGBOUNCER (transaction pooling) reaches the server pods, not the Job: `voxgate
    migrate` never reads it (one plain connection, for a session-scoped advisory lock that transaction
    pooling cannot hold), so the Job needs a direct URL instead, and the chart insists on one."""
    migrate_code = [REPO / "gateway" / "cli" / "migrate.py", REPO / "gateway" / "storage" / "migrations.py"]
    assert not [p.name for p in migrate_code if "VOXGATE_DATABASE_PGBOUNCER" in p.read_text()], (
        "the migrate path reads VOXGATE_DATABASE_PGBOUNCER now: pass it to the migration Job"
    )
    manifests = helm.template([value_set("tls")])  # PgBouncer, with a direct migration URL
    assert env(server(manifests))["VOXGATE_DATABASE_PGBOUNCER"]["value"] == "true"
    job_env = env(migrate_job(manifests))
    assert "VOXGATE_DATABASE_PGBOUNCER" not in job_env
    assert job_env["VOXGATE_DATABASE_MIGRATION_URL"]["valueFrom"]["secretKeyRef"].get("optional", False) is False

    pgbouncer = tmp_path / "pgbouncer-values.yaml"
    pgbouncer.write_text('env:\n  VOXGATE_DATABASE_PGBOUNCER: "true"\n')
    # A created Secret without a direct URL: refused, naming the value to set.
    error = helm.refusal([DEFAULT, pgbouncer])
    assert "env.VOXGATE_DATABASE_PGBOUNCER is true" in error and "secrets.values.databaseMigrationUrl" in error
    # An existing Secret: its migration key becomes required, so a Secret without it stops the Job's
    # pod before it starts instead of migrating through PgBouncer.
    ref = env(migrate_job(helm.template([value_set("existing-secret"), pgbouncer])))
    migration = ref["VOXGATE_DATABASE_MIGRATION_URL"]["valueFrom"]["secretKeyRef"]
    assert (migration["key"], migration.get("optional", False)) == ("database-migration-url", False)
    # Migrations left to the operator: nothing to insist on.
    assert not of_kind(helm.template([DEFAULT, pgbouncer], {"migrations.enabled": "false"}), "Job")


def test_tls_termination_serves_a_mounted_secret_and_probes_and_scrapes_use_https(helm: Helm) -> None:
    manifests = helm.template([value_set("tls")])
    deployment = server(manifests)
    c, variables = container(deployment), env(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for name, key in (("VOXGATE_TLS_CERT_FILE", "tls.crt"), ("VOXGATE_TLS_KEY_FILE", "tls.key")):
        path = Path(variables[name]["value"])
        mount = mounts[str(path.parent)]
        assert mount["readOnly"] is True and "subPath" not in mount  # a renewed Secret reaches the pod
        volume = volumes[mount["name"]]["secret"]
        assert volume["secretName"] == "voxgate-serving-cert"
        assert {"key": key, "path": path.name} in volume["items"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS"
    endpoint = only(manifests, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["serverName"] == "voxgate.example.internal"
    # Off by default: no TLS variables, plain probes.
    default = server(helm.template([DEFAULT]))
    assert not {"VOXGATE_TLS_CERT_FILE", "VOXGATE_TLS_KEY_FILE", "VOXGATE_UPSTREAM_CA_FILE"} & set(env(default))


@pytest.mark.parametrize("source", ["secret", "configMap"])
def test_the_upstream_ca_bundle_is_mounted_from_a_secret_or_a_config_map(helm: Helm, source: str) -> None:
    values = {f"tls.upstreamCA.{source}": "egress-ca", "tls.upstreamCA.key": "bundle.pem"}
    deployment = server(helm.template([DEFAULT], values))
    path = Path(env(deployment)["VOXGATE_UPSTREAM_CA_FILE"]["value"])
    assert path.name == "bundle.pem"
    mount = next(m for m in container(deployment)["volumeMounts"] if m["mountPath"] == str(path.parent))
    assert mount["readOnly"] is True
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    if source == "secret":
        assert volume["secret"]["secretName"] == "egress-ca"
        items = volume["secret"]["items"]
    else:
        assert volume["configMap"]["name"] == "egress-ca"
        items = volume["configMap"]["items"]
    assert items == [{"key": "bundle.pem", "path": "bundle.pem"}]


REFUSED = [
    # (values, what the message must name)
    ({}, ["secrets.values.databaseUrl", "secrets.values.redisUrl", "secrets.values.openaiApiKey"]),
    ({"secrets.values.databaseUrl": "mysql://db/x"}, ["secrets.values.databaseUrl", "pattern"]),
    ({"env.VOXGATE_OPENAI_API_KEY": "sk-plain"}, ["env.VOXGATE_OPENAI_API_KEY: a secret never goes in plain env"]),
    ({"env.VOXGATE_SPOOL_DIR": "/data"}, ["env.VOXGATE_SPOOL_DIR is set by the chart: set spool.mountPath"]),
    ({"env.voxgate_port": "x"}, ["env", "voxgate_port"]),
    ({"podSecurityContext.runAsUser": "0"}, ["podSecurityContext.runAsUser", "1"]),
    ({"rollingUpdate.maxSurge": "0"}, ["rollingUpdate.maxSurge must be above 0"]),
    ({"spool.type": "hostPath"}, ["spool.type", "emptyDir"]),
    ({"spool.type": "persistentVolumeClaim"}, ["spool.existingClaim"]),
    ({"probes.readiness.path": "readyz"}, ["probes.readiness.path"]),
    ({"ingress.enabled": "true"}, ["ingress.hosts"]),
    ({"httpRoute.enabled": "true"}, ["httpRoute.parentRefs"]),
    ({"drain.shutdownMarginSeconds": "3"}, ["drain.shutdownMarginSeconds"]),
    ({"image.digest": "latest"}, ["image.digest"]),
    ({"replicas": "3"}, ["replicas", "not allowed"]),
    ({"autoscaling.enabled": "true", "autoscaling.maxReplicas": "1"}, ["autoscaling.maxReplicas (1) must be >="]),
    ({"spool.type": "persistentVolumeClaim", "spool.existingClaim": "c"}, ["replicaCount: 1", "must not be shared"]),
    ({"env.VOXGATE_DATABASE_MIGRATION_URL": "postgresql://x"}, ["env.VOXGATE_DATABASE_MIGRATION_URL: a secret never"]),
    ({"env.VOXGATE_TLS_CERT_FILE": "/c.pem"}, ["env.VOXGATE_TLS_CERT_FILE is set by the chart: set tls.termination"]),
    ({"env.VOXGATE_UPSTREAM_CA_FILE": "/ca.pem"}, ["env.VOXGATE_UPSTREAM_CA_FILE is set by the chart"]),
    ({"tls.termination.enabled": "true"}, ["tls.termination", "secretName"]),
    ({"tls.upstreamCA.secret": "a", "tls.upstreamCA.configMap": "b"}, ["tls.upstreamCA"]),
    ({"secrets.values.databaseMigrationUrl": "mysql://db/x"}, ["secrets.values.databaseMigrationUrl", "pattern"]),
    ({"env.VOXGATE_ALERT_WEBHOOK_SECRET": "whsec_x"}, ["env.VOXGATE_ALERT_WEBHOOK_SECRET: a secret never goes in"]),
    ({"env.VOXGATE_OPENAI_WEBHOOK_SECRET": "whsec_x"}, ["env.VOXGATE_OPENAI_WEBHOOK_SECRET: a secret never goes in"]),
    ({"secrets.values.openaiWebhookSecret": "not-whsec"}, ["secrets.values.openaiWebhookSecret", "pattern"]),
]


@pytest.mark.parametrize(("values", "named"), REFUSED, ids=lambda x: ",".join(x) if isinstance(x, dict) else None)
def test_bad_values_are_refused_with_a_message_naming_them(
    helm: Helm, values: dict[str, str], named: list[str]
) -> None:
    files = [] if not values else [DEFAULT]
    error = helm.refusal(files, values)
    for fragment in named:
        assert fragment in error, error


def test_the_chart_packages_without_its_test_value_sets(helm: Helm, tmp_path: Path) -> None:
    done = helm.run("package", str(CHART), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (package,) = tmp_path.glob("voxgate-*.tgz")
    with tarfile.open(package) as tar:
        names = tar.getnames()
    assert "voxgate/values.schema.json" in names and "voxgate/templates/deployment.yaml" in names
    assert not [n for n in names if n.startswith("voxgate/ci/")]
