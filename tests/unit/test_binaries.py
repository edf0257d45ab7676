from pathlib import Path

import pytest

from trackop_testbed import binaries


def test_version_ldflags_stamp_the_real_version():
    flags = binaries._version_ldflags("v1.35.4")
    assert "-X k8s.io/component-base/version.gitVersion=v1.35.4" in flags
    assert "-X k8s.io/client-go/pkg/version.gitMinor=35" in flags


def test_hack_module_replaces_every_staging_module():
    go_mod = (binaries.hack_dir() / "go.mod").read_text()
    assert f"k8s.io/kubernetes {binaries.K8S_VERSION}" in go_mod
    replaced = [line for line in go_mod.splitlines() if "=> k8s.io/" in line]
    assert len(replaced) == 31
    assert all(line.strip().endswith("v0.35.4") for line in replaced)


def test_helm_is_stamped_like_helms_own_makefile_does():
    flags = binaries._helm_ldflags()
    assert f"-X helm.sh/helm/v3/internal/version.version={binaries.HELM_VERSION}" in flags
    # Without these, `helm template` assumes Kubernetes v1.20 and `helm lint` checks deprecations against it.
    for package in ("pkg/chartutil", "pkg/lint/rules"):
        assert f"-X helm.sh/helm/v3/{package}.k8sVersionMajor=1" in flags
        assert f"-X helm.sh/helm/v3/{package}.k8sVersionMinor={binaries.HELM_K8S_MINOR}" in flags


def test_ensure_all_builds_helm_and_fetches_the_chart_crds(monkeypatch):
    called = []
    monkeypatch.setattr(binaries, "ensure_control_plane", lambda progress: {"kubectl": "k"})
    monkeypatch.setattr(binaries, "ensure_stores", lambda progress: {"minio": "m"})
    monkeypatch.setattr(binaries, "ensure_helm", lambda progress: called.append("helm") or "h")
    monkeypatch.setattr(binaries, "ensure_third_party_crds", lambda progress: called.append("crds") or [])
    monkeypatch.setattr(binaries, "ensure_cnpg_crds", lambda progress: called.append("cnpg") or [])
    assert binaries.ensure_all(lambda message: None) == {"kubectl": "k", "minio": "m", "helm": "h"}
    assert called == ["helm", "crds", "cnpg"]


def test_helm_is_keyed_by_its_ldflags(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(binaries, "_go_version", lambda: "go1.25.0")
    built = []

    def fake_build(argv, cwd, env, what, progress):
        built.append(argv)
        (Path(env["GOBIN"]) / "helm").write_text("")

    monkeypatch.setattr(binaries, "_run_build", fake_build)
    first = binaries.ensure_helm(lambda message: None)
    assert binaries.ensure_helm(lambda message: None) == first and len(built) == 1  # cached
    assert built[0][-1] == f"helm.sh/helm/v3/cmd/helm@{binaries.HELM_VERSION}"
    assert built[0][built[0].index("-ldflags") + 1] == binaries._helm_ldflags()
    monkeypatch.setattr(binaries, "HELM_K8S_MINOR", "99")
    assert binaries.ensure_helm(lambda message: None) != first  # other stamps, another build


def test_each_hack_set_is_keyed_by_its_own_mains(monkeypatch, tmp_path):
    hack = tmp_path / "hack"
    for name in (*binaries.CONTROL_PLANE, *binaries.NODE):
        (hack / "cmd" / name).mkdir(parents=True)
        (hack / "cmd" / name / "main.go").write_text(f"package main // {name}\n")
    (hack / "go.mod").write_text("module x\n")
    (hack / "go.sum").write_text("")
    monkeypatch.setenv("TRACKOP_HACK_DIR", str(hack))
    monkeypatch.setattr(binaries, "_go_version", lambda: "go1.25.0")
    control_plane, node = binaries._hack_key(binaries.CONTROL_PLANE), binaries._hack_key(binaries.NODE)
    assert control_plane != node
    (hack / "cmd" / "kubelet" / "main.go").write_text("package main // changed\n")
    assert binaries._hack_key(binaries.CONTROL_PLANE) == control_plane, "a node main does not rebuild the control plane"
    assert binaries._hack_key(binaries.NODE) != node
    (hack / "go.sum").write_text("changed")
    assert binaries._hack_key(binaries.CONTROL_PLANE) != control_plane


def test_the_node_set_is_kubelet_kube_proxy_and_kube_scheduler_from_hack():
    for name in binaries.NODE:
        assert (binaries.hack_dir() / "cmd" / name / "main.go").is_file()
    go_mod = (binaries.hack_dir() / "go.mod").read_text()
    # `go mod tidy` for the node's mains adds these (indirect only; no version moves).
    assert "github.com/armon/circbuf" in go_mod and "sigs.k8s.io/knftables" in go_mod


def test_prebuilt_node_binaries_are_taken_from_their_directory(monkeypatch, tmp_path):
    for name in (*binaries.NODE, "coredns"):
        (tmp_path / name).write_text("")
    monkeypatch.setenv("TRACKOP_NODE_BIN_DIR", str(tmp_path))
    assert binaries.ensure_node(lambda message: None) == {name: tmp_path / name for name in (*binaries.NODE, "coredns")}
    (tmp_path / "coredns").unlink()
    with pytest.raises(FileNotFoundError, match="coredns"):
        binaries.ensure_node(lambda message: None)
