"""Pure builders of the Kubernetes objects trackop owns: spec in, object bodies out (no I/O).

The connection Secret, the migration Job, the tracking server, a managed PostgreSQL server
and the webhook configurations; the controller applies them.
"""
