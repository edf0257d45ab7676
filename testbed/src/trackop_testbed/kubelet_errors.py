"""What the local kubelet refuses (kubelet.py and the modules it uses)."""


class LocalKubeletError(RuntimeError):
    """The Pod asks for something this helper cannot give without faking it."""
