"""trackop on the bed's real node, as users run it: what a platform engineer waits for.

One script, one bed of its own with a real node (``trackop testbed up --dir DIR --node``,
stopped at the end unless ``--keep-bed``), trackop installed by ``helm install`` of the chart
with the operator image built from the project's Dockerfile (``image.pullPolicy=Never``), one
non-superuser admin role (CREATEDB CREATEROLE) and the bed's PostgreSQL and S3 reached through
their in-cluster Services. It measures:

  1. ``helm install --wait`` until both operator Pods are Ready;
  2. apply to Ready of a TrackingBackend with the tracking server enabled (the MLflow image),
     N times, each in a fresh namespace: from the create call returning until Ready=True
     (polled every 0.2 s);
  3. a training Job's creation (only the opt-in label and annotation) to its first logged run:
     from the create call until the run's row is in the backend's database (polled every 0.1 s);
  4. the webhook's added admission latency: bursts of B Pods created by C threads at once,
     with the opt-in label (the API server calls the webhook through its Service and applies
     its patch) and, as the baseline in the same run, the same Pods without it (the
     webhook's objectSelector does not match: no call). Wall time around each create call
     (the response read raw); bursts alternate baseline, webhook, webhook, baseline; the
     namespace is emptied between bursts. The Pods name a node that does not exist, so none
     runs and the node's load is the same for both.

Rerun (from the repository root; the node needs root):

    .venv/bin/python bench/bench_node.py --runs 3 --burst 200 --threads 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from kubernetes import client, config
from psycopg import sql

from benchlib import machine, trackop_bin, write_section
from trackop.api.v1alpha1 import BACKEND_ANNOTATION, INJECT_LABEL
from trackop_testbed import binaries

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "trackop"
GROUP, VERSION, PLURAL = "trackop.dev", "v1alpha1", "trackingbackends"
SEED = ("import mlflow\nmlflow.set_experiment('bench')\nwith mlflow.start_run():\n"
        "    mlflow.log_param('alpha', '0.5')\n    mlflow.log_metric('rmse', 0.78)\n")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class NodeBench:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        out = subprocess.run([trackop_bin(), "testbed", "up", "--dir", str(directory), "--node"], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        self.info = json.loads(Path(json.loads(out.strip().splitlines()[-1])["testbed"]).read_text())
        self.api = config.new_client_from_config(config_file=self.info["kubeconfig"])
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        pg = self.info["postgres"]
        self.superuser = psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                                         dbname="postgres", autocommit=True)
        self.admin = (f"adm_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex)
        self.superuser.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} CREATEDB CREATEROLE").format(
            sql.Identifier(self.admin[0]), sql.Literal(self.admin[1])))

    def helm_install(self) -> float:
        repository, _, tag = self.info["images"]["operator"].rpartition(":")
        started = time.perf_counter()
        subprocess.run([str(binaries.ensure_helm()), "--kubeconfig", self.info["kubeconfig"], "install", "trackop",
                        str(CHART), "--namespace", "trackop-system", "--create-namespace",
                        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                        "--set", "image.pullPolicy=Never", "--wait", "--timeout", "10m"],
                       check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started

    def namespace(self) -> str:
        name = f"b-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace({"metadata": {"name": name}})
        while not self.core.list_namespaced_service_account(name, field_selector="metadata.name=default").items:
            time.sleep(0.1)
        s3 = self.info["s3"]
        for secret, data in (("pg-admin", {"username": self.admin[0], "password": self.admin[1]}),
                             ("s3-creds", {"accessKeyId": s3["access_key"], "secretAccessKey": s3["secret_key"]})):
            self.core.create_namespaced_secret(name, {"metadata": {"name": secret}, "stringData": data})
        return name

    def apply_server_backend(self, namespace: str) -> float:
        pg, s3 = self.info["postgres"]["in_cluster"], self.info["s3"]
        spec = {"postgres": {"external": {"host": pg["host"], "port": pg["port"], "sslMode": "disable",
                                          "adminSecretRef": {"name": "pg-admin"}}},
                "artifacts": {"s3": {"bucket": f"bench-{uuid.uuid4().hex[:8]}", "endpoint": s3["in_cluster_endpoint"],
                                     "region": s3["region"], "credentialsSecretRef": {"name": "s3-creds"},
                                     "createBucket": True}},
                "server": {"image": self.info["images"]["mlflow"]}}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrackingBackend", "metadata": {"name": "stack"}, "spec": spec})
        started = time.perf_counter()
        deadline = started + 600
        while time.perf_counter() < deadline:
            obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "stack")
            if any(c["type"] == "Ready" and c["status"] == "True" for c in obj.get("status", {}).get("conditions", [])):
                return time.perf_counter() - started
            time.sleep(0.2)
        raise SystemExit(f"stack in {namespace} not Ready: {obj.get('status')}")

    def training_to_first_run(self, namespace: str) -> float:
        database = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                            "stack")["status"]["database"]["name"]
        pg = self.info["postgres"]
        with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"],
                             dbname=database, autocommit=True) as db:
            client.BatchV1Api(self.api).create_namespaced_job(namespace, {
                "metadata": {"name": "train"}, "spec": {"backoffLimit": 0, "template": {
                    "metadata": {"labels": {INJECT_LABEL: "true"}, "annotations": {BACKEND_ANNOTATION: "stack"}},
                    "spec": {"restartPolicy": "Never", "containers": [{
                        "name": "train", "image": self.info["images"]["training"],
                        "command": ["python3", "-c", SEED], "env": [{"name": "HOME", "value": "/tmp"}]}]}}}})
            started = time.perf_counter()
            while time.perf_counter() - started < 300:
                if db.execute("SELECT count(*) FROM runs").fetchone()[0]:
                    return time.perf_counter() - started
                time.sleep(0.1)
        raise SystemExit(f"no run logged in {namespace}")

    def burst(self, namespace: str, count: int, threads: int, injected: bool) -> list[float]:
        def pod(i: int) -> dict:
            meta: dict = {"name": f"p-{i:03d}", "labels": {"bench": "burst"}}
            if injected:
                meta |= {"labels": {"bench": "burst", INJECT_LABEL: "true"}, "annotations": {BACKEND_ANNOTATION: "stack"}}
            return {"metadata": meta, "spec": {"nodeName": "no-such-node", "containers": [
                {"name": "c", "image": self.info["images"]["training"], "command": ["true"]}]}}

        def create(i: int) -> float:
            started = time.perf_counter()
            response = self.core.create_namespaced_pod(namespace, pod(i), _preload_content=False)
            body = json.loads(response.data)
            elapsed = time.perf_counter() - started
            env = {e["name"] for c in body["spec"]["containers"] for e in c.get("env", [])}
            if injected != ("MLFLOW_TRACKING_URI" in env):
                raise SystemExit(f"pod {i}: injected={injected} but env {sorted(env)}")
            return elapsed

        with ThreadPoolExecutor(threads) as pool:
            latencies = list(pool.map(create, range(count)))
        self.core.delete_collection_namespaced_pod(namespace, label_selector="bench=burst", grace_period_seconds=0)
        while self.core.list_namespaced_pod(namespace, label_selector="bench=burst").items:
            time.sleep(0.2)
        return latencies

    def down(self) -> None:
        subprocess.run([trackop_bin(), "testbed", "down", "--dir", str(self.dir)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--keep-bed", action="store_true")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    bench = NodeBench(Path(tempfile.mkdtemp(prefix="trackop-bench-node-", dir="/tmp")))
    try:
        install = bench.helm_install()
        print(f"helm install to both operator Pods Ready: {install:.1f} s", flush=True)
        ready, first_run, namespaces = [], [], []
        for _ in range(args.runs):
            namespace = bench.namespace()
            namespaces.append(namespace)
            ready.append(bench.apply_server_backend(namespace))
            first_run.append(bench.training_to_first_run(namespace))
            print(f"apply to Ready {ready[-1]:.1f} s, training Pod to first run {first_run[-1]:.1f} s", flush=True)
        results: dict[bool, list[float]] = {False: [], True: []}
        for injected in (False, True, True, False):
            results[injected] += bench.burst(namespaces[0], args.burst, args.threads, injected)
            print(f"burst injected={injected}: p50 {percentile(results[injected], 0.5) * 1000:.0f} ms", flush=True)
    finally:
        if not args.keep_bed:
            bench.down()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    m = machine()
    base, hook = results[False], results[True]
    p = {name: (percentile(v, 0.5) * 1000, percentile(v, 0.99) * 1000) for name, v in (("off", base), ("on", hook))}
    section = f"""## On the real node: helm install, apply to Ready, first run, webhook burst

{__doc__.split(chr(10), 2)[2].split("Rerun")[0].strip()}

| | median | runs (s, in order) |
| --- | --- | --- |
| `helm install --wait` to both operator Pods Ready | {install:.1f} s | {install:.1f} |
| apply to Ready, tracking server enabled | {statistics.median(ready):.1f} s | {", ".join(f"{v:.1f}" for v in ready)} |
| training Job created to its first run in the database | {statistics.median(first_run):.1f} s | {", ".join(f"{v:.1f}" for v in first_run)} |

The first run of each row pays for what a fresh cluster does once: the first backend on a
PostgreSQL server builds the schema template (MLflow's migrations, about 8 s here), and the
first Pod of an image unpacks it (the bed imports images content-only), so the MLflow
server's first Pod and the training image's first Pod start later than the next ones.

Pod creation at a burst of {args.burst} Pods from {args.threads} threads, {len(base)} creations each:

| | p50 | p99 | mean |
| --- | --- | --- | --- |
| baseline: no opt-in label, the webhook not called | {p["off"][0]:.0f} ms | {p["off"][1]:.0f} ms | {statistics.mean(base) * 1000:.0f} ms |
| opted in: the webhook called through its Service | {p["on"][0]:.0f} ms | {p["on"][1]:.0f} ms | {statistics.mean(hook) * 1000:.0f} ms |

Added by the webhook: p50 **{p["on"][0] - p["off"][0]:.0f} ms** (ratio {p["on"][0] / p["off"][0]:.2f}), p99
**{p["on"][1] - p["off"][1]:.0f} ms** (ratio {p["on"][1] / p["off"][1]:.2f}).

Machine: {m["nproc"]} CPUs ({m["cpu"]}), {m["memory"]} RAM, Linux {m["kernel"]}, Python {m["python"]};
the bed's kube-apiserver, kubelet, containerd v1.35.4 / Debian's; commit {commit}. Measured {time.strftime("%Y-%m-%d")}.

Rerun (from the repository root; the node needs root):

```sh
.venv/bin/python bench/bench_node.py --runs {args.runs} --burst {args.burst} --threads {args.threads}
```
"""
    write_section(args.results, "## On the real node: helm install, apply to Ready, first run, webhook burst", section)
    print(section)


if __name__ == "__main__":
    sys.exit(main())
