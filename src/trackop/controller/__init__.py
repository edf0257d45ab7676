"""The controller: kopf handlers, the ordered reconcile steps, deletion and drift.

``handlers`` is the only module kopf calls; it parses the spec, hands it to the
``Reconciler`` (the sequence of ``steps``, each returning its condition) and writes what
came back into status and Events. Everything the steps decide is built by the pure
layers below (``api``, ``specs``, the SQL plans of ``postgres``); the steps only apply it.
"""
