"""What a kubelet with the EventedPLEG gate reads from the runtime (pkg/kubelet/pleg/evented.go and
kuberuntime_manager.go's GetPodStatus), done by a client that keeps the same rules:

- PodSandboxStatus with a non-zero `timestamp` is taken as the pod's whole truth: its containers are read from
  `containers_statuses` only (empty means "no containers": the kubelet creates them again);
- an event without `pod_sandbox_status` is dropped; any other event replaces the pod's cached status with the
  event's own (`pod_sandbox_status` + `containers_statuses`) unless the cache holds a newer one (`created_at`);
- a DELETED event whose container id is the sandbox's own removes the pod from the cache.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import grpc

from pycri.api import api_pb2 as cri

E = cri.ContainerEventType


class EventedKubelet:
    """Events read into a list by a thread, and the cache the evented PLEG keeps from them."""

    def __init__(self, kubelet) -> None:
        self.k = kubelet
        self.events: list[cri.ContainerEventResponse] = []
        self.cache: dict[str, tuple[int, cri.PodSandboxStatus, list[cri.ContainerStatus]]] = {}
        self.dropped = 0
        self._stream = kubelet.rt.GetContainerEvents(cri.GetEventsRequest())
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        # subscribed once the events of a pod of our own come through
        sid, _ = kubelet.run_pod("evented-probe")
        kubelet.until(lambda: any(e.container_id == sid for e in self.snapshot()), what="the event stream")
        kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid))
        kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid))

    def _read(self) -> None:
        try:
            for e in self._stream:
                with self._lock:
                    self.events.append(e)
                    self._apply(e)
        except grpc.RpcError:
            pass

    def _apply(self, e: cri.ContainerEventResponse) -> None:
        if not e.HasField("pod_sandbox_status") or not e.pod_sandbox_status.HasField("metadata"):
            self.dropped += 1
            return
        uid = e.pod_sandbox_status.metadata.uid
        if e.container_event_type == E.CONTAINER_DELETED_EVENT and e.container_id == e.pod_sandbox_status.id:
            self.cache.pop(uid, None)
            return
        if uid in self.cache and self.cache[uid][0] > e.created_at:
            return
        self.cache[uid] = (e.created_at, e.pod_sandbox_status, list(e.containers_statuses))

    def snapshot(self) -> list[cri.ContainerEventResponse]:
        with self._lock:
            return list(self.events)

    def of_pod(self, sid: str) -> list[cri.ContainerEventResponse]:
        return [e for e in self.snapshot() if e.pod_sandbox_status.id == sid or e.container_id == sid]

    def cached(self, uid: str):
        with self._lock:
            return self.cache.get(uid)

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(5)


def _evented(kubelet):
    return EventedKubelet(kubelet)


def test_pod_sandbox_status_sets_its_timestamp_and_containers_together(kubelet):
    sid, pod = kubelet.run_pod("together")
    running = kubelet.start(sid, pod, "running", command=["sleep", "3600"])
    exited = kubelet.start(sid, pod, "exited", command=["sh", "-c", "exit 3"])
    kubelet.wait_exited(exited)
    created = kubelet.create(sid, pod, "created", command=["true"])
    for verbose in (False, True):
        resp = kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=verbose))
        assert resp.timestamp > 0
        states = {c.id: (c.state, c.exit_code) for c in resp.containers_statuses}
        assert states == {running: (cri.CONTAINER_RUNNING, 0), exited: (cri.CONTAINER_EXITED, 3),
                          created: (cri.CONTAINER_CREATED, 0)}, (verbose, resp.containers_statuses)
        assert all(c.metadata.name and c.image_ref for c in resp.containers_statuses)


def test_every_event_carries_the_pod_and_its_containers_in_order(kubelet):
    ev = _evented(kubelet)
    try:
        sid, pod = kubelet.run_pod("order")
        cid = kubelet.start(sid, pod, "c", command=["sh", "-c", "exit 3"])
        kubelet.wait_exited(cid)
        kubelet.rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
        kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid))
        kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid))  # (again: no second event)
        kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid))
        kubelet.until(lambda: any(e.container_id == sid and e.container_event_type == E.CONTAINER_DELETED_EVENT
                                  for e in ev.snapshot()), what="the pod's DELETED event")
        mine = ev.of_pod(sid)
    finally:
        ev.close()
    assert [(e.container_id, e.container_event_type) for e in mine] == [
        (sid, E.CONTAINER_CREATED_EVENT), (sid, E.CONTAINER_STARTED_EVENT),
        (cid, E.CONTAINER_CREATED_EVENT), (cid, E.CONTAINER_STARTED_EVENT), (cid, E.CONTAINER_STOPPED_EVENT),
        (cid, E.CONTAINER_DELETED_EVENT), (sid, E.CONTAINER_STOPPED_EVENT), (sid, E.CONTAINER_DELETED_EVENT)]
    assert all(e.pod_sandbox_status.id == sid and e.pod_sandbox_status.metadata.uid == "uid-order" for e in mine)
    stamps = [e.created_at for e in mine]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), stamps
    seen = [[(c.id, c.state, c.exit_code) for c in e.containers_statuses] for e in mine]
    assert seen == [[], [],
                    [(cid, cri.CONTAINER_CREATED, 0)], [(cid, cri.CONTAINER_RUNNING, 0)],
                    [(cid, cri.CONTAINER_EXITED, 3)], [], [], []], seen
    pod_states = [e.pod_sandbox_status.state for e in mine]
    assert pod_states == [cri.SANDBOX_READY] * 6 + [cri.SANDBOX_NOTREADY] * 2, pod_states


def test_an_evented_kubelet_sees_the_running_container_and_the_pods_removal(kubelet):
    """The runaway: a kubelet whose cache says "no containers" creates them again, attempt after attempt."""
    ev = _evented(kubelet)
    try:
        sid, pod = kubelet.run_pod("cache")
        cid = kubelet.start(sid, pod, "c", command=["sleep", "3600"])
        kubelet.until(lambda: ev.cached("uid-cache") and [(c.id, c.state) for c in ev.cached("uid-cache")[2]]
                      == [(cid, cri.CONTAINER_RUNNING)], what="the running container in the evented cache")
        relist = kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid))
        assert relist.timestamp >= ev.cached("uid-cache")[0]  # a relist is no older than the events before it
        assert [(c.id, c.state) for c in relist.containers_statuses] == [(cid, cri.CONTAINER_RUNNING)]
        kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid))
        kubelet.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sid))
        kubelet.until(lambda: ev.cached("uid-cache") is None, what="the pod gone from the evented cache")
        assert ev.dropped == 0
    finally:
        ev.close()


def test_an_infra_container_that_dies_sends_the_pods_stopped_event(kubelet):
    ev = _evented(kubelet)
    try:
        sid, _ = kubelet.run_pod("infra-dies")
        info = kubelet.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True)).info
        os.kill(json.loads(info["info"])["pid"], signal.SIGKILL)
        kubelet.until(lambda: any(e.container_id == sid and e.container_event_type == E.CONTAINER_STOPPED_EVENT
                                  for e in ev.snapshot()), what="the pod's STOPPED event")
        stopped = [e for e in ev.of_pod(sid) if e.container_event_type == E.CONTAINER_STOPPED_EVENT]
        assert [e.pod_sandbox_status.state for e in stopped] == [cri.SANDBOX_NOTREADY]
        kubelet.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sid))
        time.sleep(0.2)
        assert len([e for e in ev.of_pod(sid) if e.container_event_type == E.CONTAINER_STOPPED_EVENT]) == 1
    finally:
        ev.close()


def test_containers_that_exit_at_once_start_before_they_stop(kubelet):
    """(CRI-O's test/ctr_events.bats): STARTED before STOPPED for a container whose process is gone at once, in
    several pods started side by side."""
    import concurrent.futures

    ev = _evented(kubelet)
    try:
        def one(i: int) -> tuple[str, str]:
            sid, pod = kubelet.run_pod(f"quick{i}")
            return sid, kubelet.start(sid, pod, "c", command=["true"])

        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            started = list(pool.map(one, range(5)))
        for sid, cid in started:
            kubelet.until(lambda: any(e.container_id == cid and e.container_event_type == E.CONTAINER_STOPPED_EVENT
                                      for e in ev.snapshot()), what=f"STOPPED of {cid}")
            kinds = [e.container_event_type for e in ev.snapshot() if e.container_id == cid]
            assert kinds == [E.CONTAINER_CREATED_EVENT, E.CONTAINER_STARTED_EVENT, E.CONTAINER_STOPPED_EVENT]
            stamps = [e.created_at for e in ev.of_pod(sid)]
            assert stamps == sorted(stamps), stamps
    finally:
        ev.close()
