"""The node's images (trackop_testbed.node.images): docker-archives ``ctr images import``
takes with their names, and the training image's inputs."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest

from trackop_testbed.node import images


def test_a_single_file_layer_image_is_a_docker_archive_with_its_name(tmp_path):
    layer = tmp_path / "layer.tar"
    images.single_file_layer(layer, "pause", b"\x7fELF...")
    archive = tmp_path / "image.tar"
    images.write_docker_archive(archive, "trackop.local/pause:abc", [layer],
                                lambda ids: images.image_config(ids, entrypoint=["/pause"]))
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == ["trackop.local/pause:abc"]
        config = json.load(tar.extractfile(manifest[0]["Config"]))
        layer_bytes = tar.extractfile(manifest[0]["Layers"][0]).read()
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/pause"] and config["os"] == "linux"
    with tarfile.open(layer) as tar:
        (member,) = tar.getmembers()
        assert (member.name, member.mode, member.uid, member.mtime) == ("pause", 0o755, 0, 0)


def test_the_config_is_named_by_its_digest(tmp_path):
    layer = tmp_path / "layer.tar"
    images.single_file_layer(layer, "x", b"x")
    archive = tmp_path / "image.tar"
    images.write_docker_archive(archive, "trackop.local/x:1", [layer], lambda ids: images.image_config(ids))
    with tarfile.open(archive) as tar:
        name = json.load(tar.extractfile("manifest.json"))[0]["Config"]
        assert hashlib.sha256(tar.extractfile(name).read()).hexdigest() + ".json" == name


def test_training_requirements_are_pinned_as_constraints_pins_them():
    constraints = "# header\nboto3==1.44.8\nmlflow-skinny==3.17.2\npsycopg==3.3.1\npsycopg-binary==3.3.1\n"
    assert images.training_requirements(constraints) == ["mlflow-skinny==3.17.2", "psycopg[binary]==3.3.1",
                                                         "boto3==1.44.8"]
    with pytest.raises(ValueError, match="boto3"):
        images.training_requirements("mlflow-skinny==1\npsycopg==1\n")


def test_training_image_uses_the_machines_apt_sources_and_a_venv_inside_it(tmp_path):
    argv = images.mmdebstrap_argv(tmp_path / "rootfs.tar", tmp_path / "r.txt", tmp_path / "c.txt", tmp_path / "ca")
    assert argv[0] == "mmdebstrap" and argv[-2:] == [images.SUITE, str(tmp_path / "rootfs.tar")]
    assert not any(arg.startswith(("http://", "https://")) for arg in argv), "no mirror: the machine's own sources"
    assert "--variant=minbase" in argv
    assert any("python3 -m venv /opt/venv" in arg for arg in argv)
    assert any("/opt/venv/bin/pip install" in arg and "-c /tmp/constraints.txt" in arg for arg in argv)
    assert f"--customize-hook=upload {tmp_path / 'ca'} /tmp/host-ca.crt" in argv
    assert any(arg.startswith("--customize-hook=rm -rf") and '"$1"/tmp/*' in arg for arg in argv), "the CA copy goes"


def test_the_image_build_drops_the_hosts_pip_settings(monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("PATH", "/usr/bin")
    env = images.build_env()
    assert "PIP_FIND_LINKS" not in env and "REQUESTS_CA_BUNDLE" not in env and env["PATH"] == "/usr/bin"


def test_keys_change_with_any_input():
    assert images._key("a", "b") != images._key("a", "c") != images._key("ab")
    assert images._key("a", "b") == images._key("a", "b")


def test_postgres_image_has_the_official_uid_no_cluster_of_its_own_and_the_entrypoint(tmp_path):
    argv = images.postgres_argv(tmp_path / "rootfs.tar", tmp_path / "entrypoint.sh")
    assert "--include=postgresql-15" in argv
    hooks = [arg for arg in argv if arg.startswith("--essential-hook=")]
    assert any("postgres:x:999:999:" in hook and "/etc/passwd" in hook for hook in hooks)
    assert any("postgres:x:999:" in hook and "/etc/group" in hook for hook in hooks)
    assert any("create_main_cluster = false" in hook for hook in hooks)
    assert f"--customize-hook=upload {tmp_path / 'entrypoint.sh'} /usr/local/bin/docker-entrypoint.sh" in argv
    assert not any('"$1"/var/run' in arg for arg in argv), "an absolute link in the root leads to the host's /run"


def test_a_directory_layer_holds_the_socket_directory_as_the_official_image_has_it(tmp_path):
    images.directory_layer(tmp_path / "run.tar", [("run/postgresql", 0o3777, 999)])
    with tarfile.open(tmp_path / "run.tar") as tar:
        (member,) = tar.getmembers()
    assert member.isdir() and (member.name, member.mode, member.uid, member.gid) == ("run/postgresql", 0o3777, 999, 999)


def test_the_stop_signal_is_in_the_image_config():
    config = images.image_config(["sha256:x"], entrypoint=["docker-entrypoint.sh"], cmd=["postgres"],
                                 stop_signal="SIGINT")["config"]
    assert config["StopSignal"] == "SIGINT" and config["Cmd"] == ["postgres"]
    assert "StopSignal" not in images.image_config(["sha256:x"])["config"]


def test_the_entrypoint_honours_the_official_contract():
    script = images.postgres_entrypoint().read_text()
    for name in ("POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB", "PGDATA", "POSTGRES_HOST_AUTH_METHOD",
                 "POSTGRES_INITDB_ARGS"):
        assert name in script
    assert "listen_addresses = '*'" in script
    assert 'set -- postgres "$@"' in script, "flags alone (-c name=value) are the server's"
