"""The reconcile's steps, one module each, in the order the Reconciler runs them.

Each step takes the reconcile's ``Context`` and what it needs to talk to (``Kube``, an
admin session), applies what the pure layers decided, and returns its condition or
raises ``StepFailed`` with the condition that says why not.
"""
