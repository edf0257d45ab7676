"""specs.progress: how long a rollout or a managed server's start has stood still, when it is
stuck and why, and how soon it is looked at again (pure); and what the reconcile makes of it
(one Warning when stuck, the drift timer keeping to the pace)."""

from __future__ import annotations

import datetime as dt

import pytest
from helpers import OWNER, make_spec

from trackop.api import conditions as cond
from trackop.api.parsing import parse
from trackop.api.v1alpha1 import SpecError
from trackop.controller import drift
from trackop.controller.outcome import Context, StepFailed, progress_failure
from trackop.controller.reconciler import failed
from trackop.specs import managed_server_status, progress, tracking_server

NOW = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def ago(seconds: float) -> str:
    return (NOW - dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- the pace ---------------------------------------------------------------------------

def test_the_first_minute_without_progress_is_polled_every_3_seconds():
    assert progress.poll_delay(0, stuck=False) == 3
    assert progress.poll_delay(59, stuck=False) == 3


def test_then_the_poll_slows_with_the_time_it_stood_still_up_to_a_minute():
    delays = [progress.poll_delay(s, stuck=False) for s in (60, 120, 300, 600, 6000)]
    assert delays == [6, 12, 30, 60, 60]
    assert delays == sorted(delays)


def test_a_stuck_wait_is_polled_once_a_minute():
    assert progress.poll_delay(0, stuck=True) == 60 == progress.SLOW_POLL_SECONDS


@pytest.mark.parametrize("value", [ago(30), ago(30).replace("Z", "+00:00"), NOW - dt.timedelta(seconds=30),
                                   (NOW - dt.timedelta(seconds=30)).replace(tzinfo=None)])
def test_seconds_since_reads_the_api_servers_and_the_clients_timestamps(value):
    assert progress.seconds_since([value], NOW) == 30


def test_seconds_since_takes_the_latest_and_ignores_what_it_cannot_read():
    assert progress.seconds_since([ago(500), None, "yesterday", ago(20), ""], NOW) == 20
    assert progress.seconds_since([None, "garbage"], NOW) == 0
    assert progress.seconds_since([ago(-30)], NOW) == 0, "a clock ahead of ours is not a negative stall"


def test_false_since_is_the_transition_of_a_false_condition_only():
    conditions = [{"type": "PostgresReady", "status": "False", "lastTransitionTime": ago(100)},
                  {"type": "Ready", "status": "True", "lastTransitionTime": ago(5)}]
    assert progress.false_since(conditions, "PostgresReady") == ago(100)
    assert progress.false_since(conditions, "Ready") is None
    assert progress.false_since(None, "PostgresReady") is None


# ---- pods -------------------------------------------------------------------------------

def pod(name: str = "p-0", created: str | None = None, phase: str = "Pending", deleting: bool = False,
        init: list[dict] | None = None, conditions: list[dict] | None = None, **container) -> dict:
    meta = {"name": name, "creationTimestamp": created or ago(10)}
    if deleting:
        meta["deletionTimestamp"] = ago(1)
    statuses = [{"name": "main", "image": "registry.example/app:1", "ready": False, "restartCount": 0,
                 **container}] if container else []
    return {"metadata": meta, "status": {"phase": phase, "containerStatuses": statuses,
                                         "initContainerStatuses": init or [], "conditions": conditions or []}}


def waiting(reason: str, message: str = "") -> dict:
    return {"state": {"waiting": {"reason": reason, **({"message": message} if message else {})}}}


@pytest.mark.parametrize("kubelet_reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"])
def test_an_image_that_cannot_be_pulled_is_one_reason_whatever_the_kubelet_alternates(kubelet_reason):
    trouble = progress.pod_trouble([pod(**waiting(kubelet_reason, "manifest unknown"))])
    assert trouble.reason == "ImagePullBackOff"
    assert "registry.example/app:1" in trouble.message and kubelet_reason in trouble.message
    assert "manifest unknown" in trouble.message and "p-0" in trouble.message


def test_a_crash_loop_is_seen_while_waiting_and_between_restarts():
    last = {"lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}, "restartCount": 4}
    backing_off = progress.pod_trouble([pod(**waiting("CrashLoopBackOff"), **last)])
    running_again = progress.pod_trouble([pod(state={"running": {}}, phase="Running", **last)])
    assert backing_off.reason == running_again.reason == "CrashLoopBackOff"
    assert "4 restarts" in running_again.message and "exit code 1 (Error)" in running_again.message
    assert "kubectl logs p-0 -c main --previous" in running_again.message


def test_a_missing_secret_or_config_is_a_container_config_error():
    trouble = progress.pod_trouble([pod(**waiting("CreateContainerConfigError", 'secret "x" not found'))])
    assert trouble.reason == "ContainerConfigError" and 'secret "x" not found' in trouble.message


def test_init_containers_are_read_first_and_long_messages_are_cut():
    init = [{"name": "init", "image": "i:1", **waiting("ErrImagePull", "x" * 5000)}]
    trouble = progress.pod_trouble([pod(init=init, **waiting("PodInitializing"))])
    assert trouble.reason == "ImagePullBackOff" and "init" in trouble.message
    assert len(trouble.message) < 500


@pytest.mark.parametrize("healthy", [
    pod(),                                                          # no container status yet
    pod(**waiting("ContainerCreating")),                            # being created
    pod(**waiting("PodInitializing")),
    pod(state={"running": {}}, phase="Running"),                    # starting, not ready yet
    pod(state={"running": {}}, ready=True, restartCount=3,          # restarted, and ready again
        lastState={"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
    pod(deleting=True, **waiting("ImagePullBackOff")),              # going away
])
def test_a_pod_that_is_pending_or_starting_is_not_in_trouble(healthy):
    assert progress.pod_trouble([healthy]) is None


def test_pod_state_says_why_a_pod_is_not_scheduled_or_what_it_waits_for():
    unschedulable = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/3 nodes are available: 3 Insufficient memory."}]
    assert progress.pod_state([pod(conditions=unschedulable)]) == \
        "pod p-0 is not scheduled (Unschedulable: 0/3 nodes are available: 3 Insufficient memory.)"
    assert progress.pod_state([pod(**waiting("ContainerCreating"))]) == "pod p-0 is Pending (main ContainerCreating)"
    assert progress.pod_state([]) == ""


# ---- the tracking server's rollout --------------------------------------------------------

SERVER_SPEC = make_spec({"server": {"replicas": 2, "progressDeadlineSeconds": 120}})


def deployment(generation: int = 2, observed: int = 2, updated: int = 0, available: int = 0,
               progressing: dict | None = None) -> dict:
    conditions = [{"type": "Available", "status": "False"}] + ([{"type": "Progressing", **progressing}]
                                                               if progressing else [])
    return {"metadata": {"name": "team-a-mlflow", "generation": generation},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "availableReplicas": available,
                       "conditions": conditions}}


def test_the_deadline_is_the_deployments_own():
    assert SERVER_SPEC.tracking_server.progress_deadline == 120
    assert tracking_server.deployment(SERVER_SPEC, OWNER)["spec"]["progressDeadlineSeconds"] == 120
    default = make_spec({"server": {}})
    assert tracking_server.deployment(default, OWNER)["spec"]["progressDeadlineSeconds"] == 600


@pytest.mark.parametrize("value", [9, 86401, "10m", True])
def test_the_deadline_is_bounded(value):
    with pytest.raises(SpecError, match="spec.server.progressDeadlineSeconds"):
        parse("ml", "team-a", {"postgres": {"external": {"host": "h", "adminSecretRef": {"name": "a"}}},
                               "server": {"progressDeadlineSeconds": value}})


def test_an_updated_and_available_deployment_is_available():
    verdict = progress.rollout_progress(SERVER_SPEC, deployment(updated=2, available=1), [], NOW)
    assert (verdict.ready, verdict.reason) == (True, "Available")
    assert verdict.message.startswith("1/2 replicas available at http://team-a-mlflow.ml-platform.svc")


def test_a_rollout_is_polled_fast_while_it_moves_and_slower_once_it_stands_still():
    moving = progress.rollout_progress(SERVER_SPEC, deployment(updated=1, progressing={
        "status": "True", "reason": "ReplicaSetUpdated", "lastUpdateTime": ago(10)}), [], NOW)
    assert (moving.ready, moving.reason, moving.stuck) == (False, "RollingOut", False)
    assert moving.message == "Deployment team-a-mlflow: 1/2 updated, 0 available"
    assert moving.poll_after == 3 and not moving.looks_stalled
    still = progress.rollout_progress(SERVER_SPEC, deployment(updated=1, progressing={
        "status": "True", "reason": "ReplicaSetUpdated", "lastUpdateTime": ago(100)}), [], NOW, ago(300))
    assert still.reason == "RollingOut" and still.stalled_for == 100 and still.poll_after == 10
    assert still.looks_stalled, "worth reading its pods"


def test_a_server_that_was_available_has_not_stood_still_since_its_last_rollout():
    """Its pods went away days after the rollout: the controller's last progress is old, but
    the wait began when ServerReady went False."""
    lost = deployment(updated=2, available=0, progressing={
        "status": "True", "reason": "NewReplicaSetAvailable", "lastUpdateTime": ago(86400)})
    just_now = progress.rollout_progress(SERVER_SPEC, lost, [], NOW)
    assert (just_now.reason, just_now.stalled_for, just_now.poll_after) == ("RollingOut", 0, 3)
    later = progress.rollout_progress(SERVER_SPEC, lost, [], NOW, false_since=ago(40))
    assert later.stalled_for == 40 and not later.stuck


def test_the_deployment_controllers_deadline_is_the_reason_with_what_the_pods_say():
    exceeded = deployment(progressing={"status": "False", "reason": "ProgressDeadlineExceeded",
                                       "lastUpdateTime": ago(130),
                                       "message": 'ReplicaSet "team-a-mlflow-5d8" has timed out progressing.'})
    verdict = progress.rollout_progress(SERVER_SPEC, exceeded, [pod(**waiting("ImagePullBackOff", "not found"))], NOW)
    assert (verdict.ready, verdict.reason, verdict.stuck) == (False, "ProgressDeadlineExceeded", True)
    assert verdict.poll_after == 60
    for part in ("0/2 updated", "no progress for 120s", "spec.server.progressDeadlineSeconds",
                 'ReplicaSet "team-a-mlflow-5d8" has timed out progressing.', "cannot pull image", "not found",
                 "kubectl -n ml-platform describe deployment team-a-mlflow"):
        assert part in verdict.message
    without_pods = progress.rollout_progress(SERVER_SPEC, exceeded, [], NOW)
    assert without_pods.reason == "ProgressDeadlineExceeded" and "cannot pull" not in without_pods.message


def test_a_new_template_is_not_judged_by_the_conditions_of_the_last_one():
    """Right after a fix is applied, the controller has not seen it: its old verdict does not count."""
    unobserved = deployment(generation=3, observed=2, progressing={
        "status": "False", "reason": "ProgressDeadlineExceeded", "lastUpdateTime": ago(900)})
    verdict = progress.rollout_progress(SERVER_SPEC, unobserved, [], NOW)
    assert (verdict.reason, verdict.stuck, verdict.stalled_for) == ("RollingOut", False, 0)


def test_a_pod_in_trouble_is_named_in_a_rollout_before_the_deadline():
    verdict = progress.rollout_progress(SERVER_SPEC, deployment(progressing={
        "status": "True", "reason": "ReplicaSetUpdated", "lastUpdateTime": ago(70)}),
        [pod(**waiting("CrashLoopBackOff"), restartCount=2, lastState={"terminated": {"exitCode": 1}})], NOW, ago(80))
    assert verdict.reason == "RollingOut" and not verdict.stuck, "the Deployment's own deadline decides"
    assert "keeps exiting" in verdict.message


# ---- a managed server ---------------------------------------------------------------------

MANAGED = parse("ml", "team-a", {"postgres": {"managed": {}}})


def statefulset(created: str | None = None, ready: int = 0) -> dict:
    return {"metadata": {"name": "team-a-postgres", "generation": 1, "creationTimestamp": created or ago(1000)},
            "spec": {"template": {"spec": {"containers": [{"args": []}]}}},
            "status": {"observedGeneration": 1, "currentRevision": "r1", "updateRevision": "r1",
                       "updatedReplicas": 1, "readyReplicas": ready}}


def test_the_startup_deadline_is_the_startup_probes_budget():
    from trackop.specs import managed_server

    probe = managed_server.statefulset(MANAGED, OWNER, {})["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == progress.STARTUP_DEADLINE_SECONDS


def test_a_managed_server_that_cannot_pull_its_image_is_stuck_at_once():
    verdict = managed_server_status.statefulset_progress(
        MANAGED, statefulset(), [pod("team-a-postgres-0", created=ago(20), **waiting("ErrImagePull"))],
        ago(20), NOW)
    assert (verdict.ready, verdict.reason, verdict.stuck) == (False, "ImagePullBackOff", True)
    assert verdict.condition_type == cond.POSTGRES_READY
    assert "team-a-postgres-0" in verdict.message and "spec.postgres.managed" in verdict.message


def test_a_managed_server_starting_is_polled_by_how_long_it_has_stood_still():
    starting = managed_server_status.statefulset_progress(
        MANAGED, statefulset(), [pod("team-a-postgres-0", created=ago(200), **waiting("ContainerCreating"))],
        ago(300), NOW)
    assert (starting.reason, starting.stuck, starting.stalled_for) == ("Starting", False, 200)
    assert starting.poll_after == 20


def test_a_managed_server_not_ready_after_the_startup_deadline_is_stuck():
    verdict = managed_server_status.statefulset_progress(
        MANAGED, statefulset(), [pod("team-a-postgres-0", created=ago(700), conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "unbound claim"}])],
        ago(900), NOW)
    assert (verdict.reason, verdict.stuck) == ("ProgressDeadlineExceeded", True)
    assert "not ready 600s after it started" in verdict.message and "unbound claim" in verdict.message


def test_the_clock_restarts_with_a_new_statefulset_or_pod():
    """PostgresReady was False for an hour for another reason (a refused spec): a server
    created just now has not stood still for an hour."""
    new = managed_server_status.statefulset_progress(MANAGED, statefulset(created=ago(30)), [], ago(3600), NOW)
    assert (new.reason, new.stalled_for) == ("Starting", 30)
    repodded = managed_server_status.statefulset_progress(
        MANAGED, statefulset(), [pod("team-a-postgres-0", created=ago(5))], ago(3600), NOW)
    assert repodded.stalled_for == 5


def test_without_a_clock_the_verdict_is_the_plain_one():
    verdict = managed_server_status.statefulset_progress(MANAGED, statefulset())
    assert (verdict.reason, verdict.stalled_for, verdict.stuck) == ("Starting", 0, False)
    assert managed_server_status.statefulset_progress(MANAGED, statefulset(ready=1)).ready


def test_a_cloudnativepg_instance_that_crash_loops_is_stuck():
    spec = parse("ml", "team-a", {"postgres": {"managed": {"engine": "CloudNativePG"}}})
    cluster = {"metadata": {"creationTimestamp": ago(100)}, "status": {"phase": "Setting up primary"}}
    verdict = managed_server_status.cluster_progress(spec, cluster, [pod(
        "team-a-postgres-1", **waiting("CrashLoopBackOff"), restartCount=3,
        lastState={"terminated": {"exitCode": 2}})], None, NOW)
    assert (verdict.reason, verdict.stuck) == ("CrashLoopBackOff", True)
    assert managed_server_status.cluster_progress(spec, cluster, [], None, NOW).reason == "Starting"


# ---- what the reconcile makes of it --------------------------------------------------------

def _failure(reason: str, stuck: bool) -> StepFailed:
    return progress_failure(progress.Progress(cond.SERVER_READY, False, reason, f"{reason} message",
                                              stalled_for=700 if stuck else 10, stuck=stuck))


def _warnings(previous_reason: str | None, failure: StepFailed) -> list[tuple[str, str, str]]:
    previous = {"conditions": [{"type": cond.READY, "status": "False", "reason": previous_reason}]} \
        if previous_reason else {}
    outcome = failed(Context(SERVER_SPEC, OWNER, previous), [], failure)
    return [e for e in outcome.events if e[0] == "Warning"]


def test_progress_posts_no_warning_until_it_is_stuck_and_then_exactly_one():
    rolling = _failure("RollingOut", stuck=False)
    assert (rolling.backoff, rolling.warn, rolling.retry_after) == (False, False, 3)
    assert _warnings(None, rolling) == [] and _warnings("RollingOut", rolling) == []
    stuck = _failure("ProgressDeadlineExceeded", stuck=True)
    assert (stuck.backoff, stuck.warn, stuck.retry_after) == (False, True, 60)
    assert _warnings("RollingOut", stuck) == [("Warning", "ProgressDeadlineExceeded",
                                               "ProgressDeadlineExceeded message")]
    assert _warnings("ProgressDeadlineExceeded", stuck) == [], "the next polls of the same cause post nothing"


def test_other_failures_still_warn_once_per_cause():
    plain = StepFailed(cond.DATABASE_READY, "AdminSecretMissing", "m", 15)
    assert plain.warn and plain.backoff
    assert len(_warnings("RollingOut", plain)) == 1 and _warnings("AdminSecretMissing", plain) == []


def test_the_drift_timer_keeps_to_the_pace_of_a_wait(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(drift.time, "monotonic", lambda: clock[0])
    checker = drift.DriftChecker(kube=None, namespaces=None, ttl=1, full_interval=30)
    body = {"metadata": {"generation": 1}}
    assert checker.check(SERVER_SPEC, body) != drift.DEFERRED
    checker.defer("ml-platform", "team-a", 60, 1)
    assert checker.check(SERVER_SPEC, body) == drift.DEFERRED
    assert checker.check(make_spec(name="team-b"), body) != drift.DEFERRED, "only that backend"
    assert checker.check(SERVER_SPEC, {"metadata": {"generation": 2}}) != drift.DEFERRED, "a new spec: at once"
    clock[0] += 61
    assert checker.check(SERVER_SPEC, body) != drift.DEFERRED
    checker.defer("ml-platform", "team-a", 60, 1)
    checker.forget("ml-platform", "team-a")  # a reconcile starts: it decides again
    assert checker.check(SERVER_SPEC, body) != drift.DEFERRED


def test_the_handlers_retry_comes_first_and_the_timers_own_tick_is_not_skipped():
    assert drift.deferral(60, handler_retries=True) > 60, "the handler's retry at 60 s comes first"
    assert 0 < drift.deferral(60, handler_retries=False) < 60, "the timer's tick at 60 s is not skipped"
    assert drift.deferral(3, handler_retries=False) == 0


def test_deferrals_whose_time_has_passed_are_dropped(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(drift.time, "monotonic", lambda: clock[0])
    checker = drift.DriftChecker(kube=None, namespaces=None, ttl=1, full_interval=30)
    for i in range(100):
        checker.defer("ns", f"b{i}", 3, 1)
    clock[0] += 10
    checker.defer("ns", "last", 3, 1)
    assert list(checker._deferred) == [("ns", "last")]


class _RolloutKube:
    """What the tracking server step asks of Kube, with a Deployment in a given state."""

    def __init__(self, deployment: dict, pods: list[dict]) -> None:
        self.deployment, self.pods, self.pod_lists = deployment, pods, []

    def apply_if_changed(self, body: dict) -> tuple[bool, dict]:
        return False, self.deployment if body["kind"] == "Deployment" else body

    def pod_bodies(self, namespace: str, name: str | None = None, selector: str | None = None) -> list[dict]:
        self.pod_lists.append(selector)
        return self.pods


def _ensure_server(deployment_body: dict, pods: list[dict]) -> tuple[StepFailed, _RolloutKube]:
    from trackop.controller.steps import tracking_server as step

    kube = _RolloutKube(deployment_body, pods)
    with pytest.raises(StepFailed) as raised:
        step.ensure(Context(SERVER_SPEC, OWNER, {}), kube)
    return raised.value, kube


def _real_ago(seconds: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_step_reads_the_pods_only_of_a_rollout_that_stood_still():
    fresh, kube = _ensure_server(deployment(updated=1, progressing={
        "status": "True", "reason": "ReplicaSetUpdated", "lastUpdateTime": _real_ago(5)}), [])
    assert (fresh.reason, fresh.retry_after, fresh.backoff, fresh.warn) == ("RollingOut", 3, False, False)
    assert kube.pod_lists == [], "a moving rollout costs no LIST of pods"
    stuck, kube = _ensure_server(deployment(progressing={
        "status": "False", "reason": "ProgressDeadlineExceeded", "lastUpdateTime": _real_ago(200)}),
        [pod(**waiting("ImagePullBackOff"))])
    assert (stuck.reason, stuck.retry_after, stuck.backoff, stuck.warn) == ("ProgressDeadlineExceeded", 60, False,
                                                                            True)
    assert kube.pod_lists == ["app.kubernetes.io/name=mlflow,app.kubernetes.io/instance=team-a"]
    assert "cannot pull image" in stuck.message


# ---- the server's memory and MLflow's jobs -------------------------------------------------
def _server_container(server: dict) -> dict:
    return tracking_server.deployment(make_spec({"server": server}), OWNER)["spec"]["template"]["spec"]["containers"][0]


def test_jobs_are_off_unless_asked_for_and_the_memory_default_follows_workers_and_jobs():
    default = _server_container({})
    env = {e["name"]: e.get("value") for e in default["env"]}
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    # Two workers: the 1 GiB limit the node showed enough without jobs (tests/node).
    assert default["resources"] == {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "1024Mi"}}
    four = _server_container({"workers": 4})["resources"]["limits"]["memory"]
    assert four == "1536Mi"
    jobs = _server_container({"jobExecution": True})
    assert {e["name"]: e.get("value") for e in jobs["env"]}["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
    assert jobs["resources"]["limits"]["memory"] == "3072Mi"
    # Resources given are taken as they are.
    given = {"limits": {"memory": "6Gi"}}
    assert _server_container({"jobExecution": True, "resources": given})["resources"] == given
    with pytest.raises(SpecError, match="spec.server.jobExecution"):
        make_spec({"server": {"jobExecution": "yes"}})
