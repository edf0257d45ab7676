from trackop.testbed import binaries


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
