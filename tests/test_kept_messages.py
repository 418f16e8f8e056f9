"""The read path's kept messages (pure logic on a temp store): a List or Status answer put together from the
serialized messages a record keeps (pycri/wire.py) parses to exactly the message built afresh, and a change of
the record, or of its image's names, is in the very next answer."""

from __future__ import annotations

import random

import pytest

from pycri import wire
from pycri.api import api_pb2 as cri
from pycri.containers import messages as cmsg
from pycri.pods import messages as pmsg
from pycri.state.records import (C_CREATED, C_EXITED, C_RUNNING, SB_NOTREADY, SB_READY, ContainerRecord, Records,
                                 SandboxRecord, Shown, asking, pb)
from pycri.state.store import Store


class Images:
    """What the messages ask of the ImageManager: an image's tags and the generation of its names."""

    def __init__(self):
        self.tags: dict[str, tuple[str, ...]] = {}
        self.names_generation = 0

    def repo_tags(self, image_id):
        return self.tags.get(image_id, ())

    def rename(self, image_id, *tags):
        self.tags[image_id] = tuple(sorted(tags))
        self.names_generation += 1


def _sandbox(i: int, rng: random.Random) -> SandboxRecord:
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=f"pod-{i}", namespace="ns", uid=f"uid-{i}", attempt=i % 3),
        labels={f"l{k}": str(rng.random()) for k in range(rng.randrange(4))},
        annotations={"a/b": "c" * rng.randrange(300)})
    return SandboxRecord(id=f"{i:064x}", name=f"pod-{i}_ns_uid-{i}_0", config_pb=pb(config), state=SB_READY,
                         created_at=rng.randrange(1 << 62), ips=[f"10.0.0.{i}", f"fd00::{i}"][:rng.randrange(3)],
                         runtime_handler=rng.choice(["", "runc"]))


def _container(i: int, sandbox: SandboxRecord, rng: random.Random) -> ContainerRecord:
    config = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=f"c{i}", attempt=rng.randrange(5)),
        image=cri.ImageSpec(image="busybox:latest", user_specified_image="busybox"),
        labels={"io.kubernetes.container.name": f"c{i}"}, annotations={"x": "y" * rng.randrange(200)},
        mounts=[cri.Mount(container_path="/data", host_path="/tmp/x")] * rng.randrange(3))
    return ContainerRecord(id=f"{i + 1000:064x}", sandbox_id=sandbox.id, name=f"c{i}_{sandbox.name}",
                           config_pb=pb(config), image_id="sha256:" + "ab" * 32, image_ref="busybox@sha256:00",
                           state=rng.choice([C_CREATED, C_RUNNING, C_EXITED]), created_at=rng.randrange(1 << 62),
                           exit_code=rng.randrange(256), reason="Completed", log_path=f"/logs/{i}.log",
                           user={"uid": i, "gid": 7, "additionalGids": [7, 8]})


@pytest.fixture
def node(tmp_path):
    rng = random.Random(7)
    records = Records(Store(tmp_path / "m.db"))
    sandboxes = [_sandbox(i, rng) for i in range(12)]
    for sandbox in sandboxes:
        records.save_sandbox(sandbox)
    for i in range(40):
        records.save_container(_container(i, sandboxes[i % 12], rng))
    images = Images()
    images.rename("sha256:" + "ab" * 32, "docker.io/library/busybox:latest")
    return records, images


def test_assembled_lists_parse_as_the_messages_built_afresh(node):
    records, images = node
    containers = cri.ListContainersResponse.FromString(wire.repeated_field(
        wire.number(cri.ListContainersResponse, "containers"),
        [cmsg.item_bytes(c, images) for c in records.containers.values()]))
    assert containers == cri.ListContainersResponse(containers=[
        cmsg.container_item(c, images.repo_tags(c.image_id)) for c in records.containers.values()])
    sandboxes = cri.ListPodSandboxResponse.FromString(wire.repeated_field(
        wire.number(cri.ListPodSandboxResponse, "items"), [pmsg.item_bytes(s) for s in records.sandboxes.values()]))
    assert sandboxes == cri.ListPodSandboxResponse(items=[pmsg.sandbox_item(s) for s in records.sandboxes.values()])
    assert len(containers.containers) == 40 and len(sandboxes.items) == 12


def test_an_assembled_pod_status_parses_as_the_message_built_afresh(node):
    records, images = node
    sandbox = next(iter(records.sandboxes.values()))
    shown = cmsg.shown_of(records, [sandbox.id])
    assert [c.id for c in shown] == [c.id for c in sorted(records.containers_of(sandbox.id),
                                                          key=lambda c: c.created_at)]
    info = cri.PodSandboxStatusResponse(timestamp=123, info={"info": "{}"})
    raw = (wire.message_field(1, pmsg.status_bytes(sandbox)) + info.SerializeToString()
           + wire.repeated_field(3, [cmsg.status_bytes(c, images) for c in shown]))
    assert cri.PodSandboxStatusResponse.FromString(raw) == cri.PodSandboxStatusResponse(
        status=pmsg.sandbox_status(sandbox), timestamp=123, info={"info": "{}"},
        containers_statuses=[cmsg.container_status(c, images.repo_tags(c.image_id)) for c in shown])


def test_a_change_is_in_the_next_answer(node):
    records, images = node
    c = next(iter(records.containers.values()))
    before = cri.ContainerStatus.FromString(cmsg.status_bytes(c, images))
    c.state, c.exit_code, c.reason = C_EXITED, 137, "OOMKilled"  # set, not saved yet: already shown
    after = cri.ContainerStatus.FromString(cmsg.status_bytes(c, images))
    assert (after.state, after.exit_code, after.reason) == (cri.CONTAINER_EXITED, 137, "OOMKilled")
    assert cri.Container.FromString(cmsg.item_bytes(c, images)).state == cri.CONTAINER_EXITED
    assert before.image.image == "docker.io/library/busybox:latest"
    images.rename(c.image_id, "docker.io/library/other:1")  # the tag the status names is gone
    assert cri.ContainerStatus.FromString(cmsg.status_bytes(c, images)).image.image == "docker.io/library/other:1"

    s = next(iter(records.sandboxes.values()))
    assert cri.PodSandbox.FromString(pmsg.item_bytes(s)).state == cri.SANDBOX_READY
    s.state = SB_NOTREADY
    assert cri.PodSandbox.FromString(pmsg.item_bytes(s)).state == cri.SANDBOX_NOTREADY
    s.ips.append("10.9.9.9")  # changed in place: shown once saved, as every change is
    records.save_sandbox(s)
    assert "10.9.9.9" in str(cri.PodSandboxStatus.FromString(pmsg.status_bytes(s)).network)


def test_containers_of_follows_saves_and_deletes(node):
    records, _ = node
    sid = next(iter(records.sandboxes))
    mine = {c.id for c in records.containers.values() if c.sandbox_id == sid}
    assert {c.id for c in records.containers_of(sid)} == mine and mine
    for cid in mine:
        records.delete_container(cid)
    assert records.containers_of(sid) == []
    reloaded = Records(records.store)
    assert {c.id for c in reloaded.containers_of(next(iter(reloaded.sandboxes)))} == set()
    assert sum(len(reloaded.containers_of(s)) for s in reloaded.sandboxes) == 40 - len(mine)


@pytest.mark.parametrize("flt, asks", [
    (None, False), (cri.ContainerFilter(), False), (cri.ContainerFilter(id="ab"), True),
    (cri.ContainerFilter(pod_sandbox_id="ab"), True), (cri.ContainerFilter(label_selector={"a": "b"}), True),
    (cri.ContainerFilter(state=cri.ContainerStateValue(state=cri.CONTAINER_CREATED)), True),
    (cri.PodSandboxFilter(), False), (cri.PodSandboxFilter(state=cri.PodSandboxStateValue()), True),
    (cri.ContainerStatsFilter(), False), (cri.ContainerStatsFilter(pod_sandbox_id="x"), True),
])
def test_an_empty_filter_asks_nothing(flt, asks):
    assert (asking(flt) is not None) == asks


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 1 << 35])
def test_varint_is_protobufs(n):
    assert cri.PodSandboxStatusResponse.FromString(b"\x20" + wire.varint(n)).timestamp == n


def test_every_change_of_any_record_is_counted(node):
    """The unfiltered Lists are kept on Shown.changes (pycri/server/runtime_service.py): a field set, a save and
    a delete of any record each move it."""
    records, _ = node
    c = next(iter(records.containers.values()))
    s = next(iter(records.sandboxes.values()))
    for change in (lambda: setattr(c, "state", C_EXITED), lambda: records.save_container(c),
                   lambda: setattr(s, "state", SB_NOTREADY), lambda: records.save_sandbox(s),
                   lambda: records.delete_container(c.id), lambda: records.delete_sandbox(s.id)):
        before = Shown.changes
        change()
        assert Shown.changes > before
    before = Shown.changes
    cmsg.item_bytes(next(iter(records.containers.values())), Images())  # reading changes nothing
    pmsg.status_bytes(next(iter(records.sandboxes.values())))
    assert Shown.changes == before
