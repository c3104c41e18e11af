"""Taking policies to a cluster: Serve deployment options, Serve configs, policy packages
and KubeRay manifests. No Ray import here; Serve's own schema is consulted lazily.

Example::

    from cascade.deploy import AppArgs, serve_config
    from cascade.policy import load_policy

    config = serve_config([load_policy("policies/digits.yaml")],
                          AppArgs(policies=["policies/digits.yaml"]))
"""

from __future__ import annotations

from cascade.deploy._config import ProxyLocation, serve_config, validate_serve_config
from cascade.deploy._kuberay import DEFAULT_IMAGE, RAY_IMAGE, dump_yaml, kuberay_manifest
from cascade.deploy._options import (
    INGRESS,
    AppArgs,
    deployment_name,
    ingress_options,
    tier_options,
)
from cascade.deploy._package import PACKAGE_TOP, PolicyPackage, build_package

__all__ = [
    "DEFAULT_IMAGE",
    "INGRESS",
    "PACKAGE_TOP",
    "RAY_IMAGE",
    "AppArgs",
    "PolicyPackage",
    "ProxyLocation",
    "build_package",
    "deployment_name",
    "dump_yaml",
    "ingress_options",
    "kuberay_manifest",
    "serve_config",
    "tier_options",
    "validate_serve_config",
]
