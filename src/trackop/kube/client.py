"""``Kube``: the client the controller and the webhook service hold."""

from __future__ import annotations

from kubernetes import client

from .cluster import ClusterCalls
from .metadata import MetadataCalls
from .objects import ObjectCalls
from .secrets import SecretCalls


class Kube(SecretCalls, ObjectCalls, MetadataCalls, ClusterCalls):
    def __init__(self, api_client: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
