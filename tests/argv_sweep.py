"""The argv half of the session's secret sweep (tests/e2e/test_zz_secret_sweep.py): every
Pod's, Job's, Deployment's and StatefulSet's containers, their command and args as the
kubelet would run them.

Two findings: a ``$(VAR)`` in command or args that names an env var carrying a Secret's
data is a leak whatever the value (helpers.argv_secret_references: the kubelet puts it in
the process's argv, readable in /proc/<pid>/cmdline on the node); and the command and args
expanded with the container's env, resolved from the API server as the kubelet does
(trackop_testbed.pod_env), are haystacks the session's secrets are searched in.
"""

from __future__ import annotations

from collections.abc import Iterator

from helpers import argv_secret_references
from kubernetes import client
from trackop_testbed.kubelet_errors import LocalKubeletError
from trackop_testbed.pod_env import expand, resolve_env

from trackop.kube.client import Kube


def _pods(kube_api: client.ApiClient, namespace: str | None) -> Iterator[tuple[str, client.V1Pod]]:
    """(where, a Pod or a workload's Pod template as a Pod) in ``namespace``, or in all."""
    core, batch, apps = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api), client.AppsV1Api(kube_api)

    def listed(kind: str, in_all, in_one) -> list:
        return [(kind, o) for o in (in_one(namespace) if namespace else in_all()).items]

    for kind, obj in [*listed("Pod", core.list_pod_for_all_namespaces, core.list_namespaced_pod),
                      *listed("Job", batch.list_job_for_all_namespaces, batch.list_namespaced_job),
                      *listed("Deployment", apps.list_deployment_for_all_namespaces, apps.list_namespaced_deployment),
                      *listed("StatefulSet", apps.list_stateful_set_for_all_namespaces,
                              apps.list_namespaced_stateful_set)]:
        where = f"{kind} {obj.metadata.namespace}/{obj.metadata.name}"
        if kind == "Pod":
            yield where, obj
        else:
            template = obj.spec.template
            meta = client.V1ObjectMeta(namespace=obj.metadata.namespace, name=obj.metadata.name,
                                       labels=(template.metadata.labels if template.metadata else None))
            yield where, client.V1Pod(metadata=meta, spec=template.spec)


def workload_argvs(kube_api: client.ApiClient, namespace: str | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """(haystacks: (where, the expanded command and args), findings: '<where>: container <c>
    expands $(VAR) ...' for each secret-carrying reference)."""
    kube = Kube(kube_api)
    haystacks, findings = [], []
    for where, pod in _pods(kube_api, namespace):
        for container in [*(pod.spec.init_containers or []), *pod.spec.containers]:
            body = kube_api.sanitize_for_serialization(container)
            findings += [f"{where}: container {container.name} expands $({name}), which carries a Secret's data, "
                         "into its argv" for name in argv_secret_references(body)]
            try:
                env = resolve_env(kube, pod, container)
            except (LocalKubeletError, client.ApiException):
                env = {}  # a Secret gone with its test: the references above still count
            argv = [expand(part, env) for part in [*(container.command or []), *(container.args or [])]]
            haystacks.append((f"{where} container {container.name} argv (expanded)", "\n".join(argv)))
    return haystacks, findings
