"""Taking policies to a cluster: Serve configs, policy packages and KubeRay manifests.

No Ray import here; Serve's own schema is consulted lazily.

Example::

    from cascade.cluster import serve_config
    from cascade.serving import AppArgs
    from cascade.policy import read_policy

    config = serve_config([read_policy("policies/digits.yaml")],
                          AppArgs(policies=["policies/digits.yaml"]))
"""

from __future__ import annotations

from cascade.cluster._config import (
    HAPROXY_ENV,
    ProxyLocation,
    RayProxy,
    haproxy_available,
    serve_config,
    validate_serve_config,
)
from cascade.cluster._haproxy import queue_environment, queued_config
from cascade.cluster._kuberay import DEFAULT_IMAGE, RAY_IMAGE, dump_yaml, kuberay_manifest
from cascade.cluster._package import PACKAGE_TOP, PolicyPackage, build_package

__all__ = [
    "DEFAULT_IMAGE",
    "HAPROXY_ENV",
    "PACKAGE_TOP",
    "RAY_IMAGE",
    "PolicyPackage",
    "ProxyLocation",
    "RayProxy",
    "build_package",
    "dump_yaml",
    "haproxy_available",
    "kuberay_manifest",
    "queue_environment",
    "queued_config",
    "serve_config",
    "validate_serve_config",
]
