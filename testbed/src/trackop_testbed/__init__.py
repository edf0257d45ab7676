"""trackop's local test bed, outside the product package (never in the wheel or the image):
a real Kubernetes control plane, PostgreSQL and object stores without Docker (bed.py), the
stand-in kubelet that runs Pods as local processes (kubelet.py), the quickstart
(quickstart.py, ``trackop dev``) and the ``trackop testbed``/``trackop dev`` commands,
which the product CLI loads from this package's entry points (cli.py)."""
