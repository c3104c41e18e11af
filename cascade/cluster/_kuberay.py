"""A KubeRay ``RayService`` manifest around a cascade Serve config.

The image holds cascade, the policies and their models (``deployments/kuberay/Dockerfile``),
so the Serve config names policies by their path in the image and needs no working_dir.
Worker groups are sized from the deployments' Ray resources: a CPU group for the ingress and
CPU tiers, and a GPU group when a tier asks for GPUs (its CUDA execution provider falls back
to CPU where the GPU build of onnxruntime is missing). The head runs no replicas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml

__all__ = ["DEFAULT_IMAGE", "RAY_IMAGE", "dump_yaml", "kuberay_manifest"]

Env = Mapping[str, str | dict[str, Any]]
"""A container's environment: a value, or a ``valueFrom`` source (a Secret's key)."""

RAY_IMAGE = "rayproject/ray:2.60.0-py311"  # the base of deployments/kuberay/Dockerfile
DEFAULT_IMAGE = "cascade-serve:latest"  # what that Dockerfile builds; push it to your registry


def _demand(deployments: list[dict[str, Any]], *, gpu: bool, most: bool) -> tuple[float, float]:
    """(CPUs, GPUs) of the deployments that do (``gpu``) or do not use GPUs, at their minimum
    replica counts or (``most``) their maximum."""
    cpus = gpus = 0.0
    for deployment in deployments:
        actor = deployment.get("ray_actor_options", {})
        if bool(actor.get("num_gpus")) != gpu:
            continue
        scaling = deployment.get("autoscaling_config")
        if scaling is None:
            replicas = deployment.get("num_replicas", 1)
        else:
            replicas = scaling["max_replicas"] if most else max(1, scaling["min_replicas"])
        cpus += replicas * float(actor.get("num_cpus", 1))
        gpus += replicas * float(actor.get("num_gpus", 0))
    return cpus, gpus


def _container(
    name: str, image: str, cpus: float, memory_gib: float, gpus: int = 0,
    env: Env | None = None,
) -> dict[str, Any]:  # fmt: skip
    limits: dict[str, Any] = {"cpu": f"{cpus:g}", "memory": f"{memory_gib:g}Gi"}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": {"limits": limits, "requests": dict(limits)},
    }
    if env:
        container["env"] = [
            {"name": key, "value": value} if isinstance(value, str)
            else {"name": key, "valueFrom": value}
            for key, value in env.items()
        ]  # fmt: skip
    if name == "ray-head":
        container["ports"] = [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
            {"containerPort": 8000, "name": "serve"},
        ]
    return container


def _group(
    name: str, image: str, *, cpus: int, gpus: int, low: int, high: int,
    env: Env | None,
) -> dict[str, Any]:  # fmt: skip
    params = {"num-cpus": str(cpus)}
    if gpus:
        params["num-gpus"] = str(gpus)
    return {
        "groupName": name,
        "replicas": low,
        "minReplicas": low,
        "maxReplicas": max(low, high),
        "rayStartParams": params,
        "template": {
            "spec": {"containers": [_container("ray-worker", image, cpus, 2.0 * cpus, gpus, env)]}
        },
    }


def kuberay_manifest(
    config: dict[str, Any],
    *,
    name: str,
    image: str = DEFAULT_IMAGE,
    worker_cpus: int = 4,
    gpus_per_worker: int = 1,
    env: Env | None = None,
) -> dict[str, Any]:
    """A ``ray.io/v1`` RayService serving ``config`` (a Serve config, see ``serve_config``);
    ``env``: environment of every Ray container (e.g. ``HAPROXY_ENV``, Serve's switches); a
    value that is a mapping is the variable's ``valueFrom`` (``{"secretKeyRef": {...}}``:
    the bearer token from a Secret, never written into the manifest).

    Example::

        manifest = kuberay_manifest(config, name="cascade-digits", image="cascade:0.1")
    """
    if worker_cpus < 1 or gpus_per_worker < 1:
        raise ValueError("worker_cpus and gpus_per_worker must be >= 1")
    deployments = [d for app in config["applications"] for d in app.get("deployments", [])]
    groups = []
    cpu_low, _ = _demand(deployments, gpu=False, most=False)
    cpu_high, _ = _demand(deployments, gpu=False, most=True)
    groups.append(
        _group(
            "cpu",
            image,
            cpus=worker_cpus,
            gpus=0,
            low=max(1, math.ceil(cpu_low / worker_cpus)),
            high=math.ceil(cpu_high / worker_cpus),
            env=env,
        )
    )
    _, gpu_low = _demand(deployments, gpu=True, most=False)
    _, gpu_high = _demand(deployments, gpu=True, most=True)
    if gpu_high:
        groups.append(
            _group(
                "gpu",
                image,
                cpus=worker_cpus,
                gpus=gpus_per_worker,
                low=math.ceil(gpu_low / gpus_per_worker),
                high=math.ceil(gpu_high / gpus_per_worker),
                env=env,
            )
        )
    head = {
        # the head keeps the GCS and the Serve controller; replicas go to the workers
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": {"spec": {"containers": [_container("ray-head", image, 2, 4, env=env)]}},
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": yaml.safe_dump(config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_IMAGE.split(":")[1].split("-")[0],
                "enableInTreeAutoscaling": True,
                "headGroupSpec": head,
                "workerGroupSpecs": groups,
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # the embedded Serve config stays readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def dump_yaml(document: dict[str, Any]) -> str:
    """YAML in the order given, multi-line strings (``serveConfigV2``) as literal blocks."""
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False)
