"""Where MLflow's artifacts go: bucket URIs, the env workloads need, and the store checks.

Deciding is pure (the locations, ``normalise_prefix``, the client env); each check is the
one function of its store that talks to it. A check proves what ``ArtifactsReady``
promises: the bucket (or container) is reachable with these credentials AND a write under
the prefix succeeds. Its errors carry a condition reason and a message built by trackop
from the store's error code only: never a key, and never the server's own message (which
may echo request details).

- ``common``: ``ArtifactsError``, the failures every store shares, worded once;
- ``s3``, ``gcs``, ``azure``: one store each (location, client env, client, check, create);
- ``check``: one entry point per ``spec.artifacts``, whichever store it names.

The GCS and Azure SDKs are imported only when a check runs.
"""
