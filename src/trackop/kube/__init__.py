"""The one place that reads and writes Kubernetes objects (besides kopf's own status patches).

``Kube`` (client.py) is the object the rest of trackop holds; its methods come by kind of
object, one module each: Secrets, the objects trackop applies (and Jobs, pods), the drift
checks' metadata-only reads, and cluster-wide things (namespaces, watches, webhook
configurations, Events). ``errors`` reads the API server's refusals.
"""
