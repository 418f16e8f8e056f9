"""CRI requests with random field values against a running daemon (the real one, with a network and the local
registry, and one running pod + container whose ids the random requests may name).

Requests are built from the proto descriptors: every field of every unary RuntimeService/ImageService method,
nested messages, repeated and map fields, enums with unknown numbers, extreme integers, NaN. The daemon must answer
each with a status that is not UNKNOWN and not the INTERNAL of an unhandled exception ("internal error in ..."),
and must still be alive and answering afterwards. What random requests create (pods, containers) is removed through
the API at the end; the daemon fixture then checks nothing leaked (mounts, netns, veths, cgroups, processes).

Paths that the daemon would write to or bind from the host (log dirs, log paths, host_path mounts, hostname files)
are forced under the test's work dir or reduced to a name (an empty host_path stays empty: image volumes), except
the log paths that must be refused (relative log directories, absolute log paths, `..` in either): those go as
drawn, and nothing may appear in the daemon's working directory or in / afterwards. Sysctls are dropped (a
host-network pod applies them to the host).
"""

from __future__ import annotations

import math
import os
import time

import grpc
from google.protobuf import descriptor as D
from hypothesis import given, settings
from hypothesis import strategies as st

from pycri.api import api_pb2 as cri
from tests.fuzz.profiles import budget
from tests.lifecycle.conftest import container_config, pod_config

POD, CTR, IMG = "@POD@", "@CTR@", "@IMG@"
SKIP = {"GetContainerEvents"}  # server streaming: no single answer
CALL_TIMEOUT = 20

_STRINGS = ["", ".", "..", "../x", "/nonexistent-pycri-fuzz/x", "a" * 300, "\x00", "\udcff".encode(
    "utf-8", "surrogatepass").decode("utf-8", "replace"), "busybox", "sha256:" + "0" * 64, "k=v", "*", "%s%n",
            "127.0.0.1:1/nothing:tag", POD, CTR, IMG, POD[:3], "default", "runc", "pycri", "NODE", "tcp", "0",
            "a\nb", "x\rnameserver 1.1.1.1", "../../escaped.log", "/tmp/escaped.log", "\u0660", "\u00b2"]
_INTS = {
    D.FieldDescriptor.TYPE_INT32: (-2 ** 31, 2 ** 31 - 1), D.FieldDescriptor.TYPE_SINT32: (-2 ** 31, 2 ** 31 - 1),
    D.FieldDescriptor.TYPE_SFIXED32: (-2 ** 31, 2 ** 31 - 1), D.FieldDescriptor.TYPE_INT64: (-2 ** 63, 2 ** 63 - 1),
    D.FieldDescriptor.TYPE_SINT64: (-2 ** 63, 2 ** 63 - 1), D.FieldDescriptor.TYPE_SFIXED64: (-2 ** 63, 2 ** 63 - 1),
    D.FieldDescriptor.TYPE_UINT32: (0, 2 ** 32 - 1), D.FieldDescriptor.TYPE_FIXED32: (0, 2 ** 32 - 1),
    D.FieldDescriptor.TYPE_UINT64: (0, 2 ** 64 - 1), D.FieldDescriptor.TYPE_FIXED64: (0, 2 ** 64 - 1),
}


def _repeated(field: D.FieldDescriptor) -> bool:
    is_repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; `label` before
    return is_repeated if is_repeated is not None else field.label == D.FieldDescriptor.LABEL_REPEATED


_ID_FIELDS = {"container_id": CTR, "pod_sandbox_id": POD, "image": IMG, "id": POD}


def _scalar(field: D.FieldDescriptor):
    t = field.type
    if t == D.FieldDescriptor.TYPE_STRING:
        anything = st.one_of(st.sampled_from(_STRINGS), st.text(max_size=12))
        if field.name in _ID_FIELDS:  # mostly the real pod/container/image, so requests get past the lookup
            return st.one_of(st.just(_ID_FIELDS[field.name]), st.just(_ID_FIELDS[field.name]), anything)
        return anything
    if t == D.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=16)
    if t == D.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (D.FieldDescriptor.TYPE_DOUBLE, D.FieldDescriptor.TYPE_FLOAT):
        return st.one_of(st.sampled_from([0.0, -1.0, math.nan, math.inf, 1e300]), st.floats(width=32))
    if t == D.FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 99))
    lo, hi = _INTS[t]
    return st.one_of(st.sampled_from([lo, hi, 0, 1, -1 if lo < 0 else 2, 1 << 20]), st.integers(lo, hi))


def message(desc: D.Descriptor, depth: int = 0, density: int = 3):
    """A strategy for random instances of desc: each field set with probability 1 - 1/density (sparse: density
    < 0, then set with probability 1/|density|), nested to depth 3."""
    @st.composite
    def build(draw):
        msg = {}
        for field in desc.fields:
            if density > 0 and not draw(st.integers(0, density - 1)):
                continue
            if density < 0 and draw(st.integers(0, -density - 1)):
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_f, val_f = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
                if depth >= 3 and val_f.message_type is not None:
                    continue
                val = message(val_f.message_type, depth + 1, density) if val_f.message_type else _scalar(val_f)
                msg[field.name] = draw(st.dictionaries(_scalar(key_f), val, max_size=2))
                continue
            if field.message_type is not None:
                if depth >= 3:
                    continue
                inner = message(field.message_type, depth + 1, density)
            else:
                inner = _scalar(field)
            if _repeated(field):
                msg[field.name] = draw(st.lists(inner, max_size=3))
            else:
                msg[field.name] = draw(inner)
        return msg
    return build()


def to_proto(cls, value: dict):
    out = cls()
    for name, v in value.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            val_f = field.message_type.fields_by_name["value"]
            target = getattr(out, name)
            for k, x in v.items():
                if val_f.message_type is not None:
                    target[k].CopyFrom(to_proto(target[k].__class__, x))
                else:
                    target[k] = x
        elif field.message_type is not None:
            if _repeated(field):
                rep = getattr(out, name)
                for x in v:
                    item = rep.add()
                    item.CopyFrom(to_proto(type(item), x))
            else:
                getattr(out, name).CopyFrom(to_proto(type(getattr(out, name)), v))
        elif _repeated(field):
            getattr(out, name).extend(v)
        else:
            setattr(out, name, v)
    return out


def methods():
    out = []
    for svc in cri.DESCRIPTOR.services_by_name.values():
        for m in svc.methods:
            if m.name not in SKIP and not m.server_streaming and not m.client_streaming:
                out.append((svc.name, m.name, m.input_type))
    return out


METHODS = methods()
# the methods with the most validation behind them, drawn more often
WEIGHTED = METHODS + [m for m in METHODS if m[1] in ("RunPodSandbox", "CreateContainer", "ExecSync",
                                                      "UpdateContainerResources", "PullImage")] * 3
DESTRUCTIVE = {"StopPodSandbox", "RemovePodSandbox", "StopContainer", "RemoveContainer", "RemoveImage"}


def sanitise(msg, ids: dict[str, str], workdir: str) -> None:
    """Ids in, host-writing paths tamed (see the module docstring)."""
    for field, value in list(msg.ListFields()):
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if field.name == "sysctls":
                msg.ClearField(field.name)
            continue
        if field.name == "host_port":  # a DNAT on a random host port could take this machine's own services
            msg.host_port = 0
            continue
        if field.message_type is not None:
            for sub in (value if _repeated(field) else [value]):
                sanitise(sub, ids, workdir)
            continue
        if field.type != D.FieldDescriptor.TYPE_STRING:
            continue

        def fix(s: str) -> str:
            for k, v in ids.items():
                s = s.replace(k, v)
            refused = ".." in s.split("/")
            if field.name in ("log_directory",):
                return s if s and (refused or not s.startswith("/")) else f"{workdir}/logs"
            if field.name in ("log_path",):
                return s if refused or s.startswith("/") else "".join(c for c in s if c.isalnum())[:20] or "x.log"
            if field.name in ("host_path",):  # (empty stays empty: an image volume's, or a mount refused)
                return f"{workdir}/vol/" + "".join(c for c in s if c.isalnum())[:20] if s else ""
            return s
        if _repeated(field):
            new = [fix(s) for s in value]
            del value[:]
            value.extend(new)
        else:
            setattr(msg, field.name, fix(value))


def _call(d, svc: str, name: str, req):
    stub = d.runtime if svc == "RuntimeService" else d.image
    try:
        getattr(stub, name)(req, timeout=CALL_TIMEOUT)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def test_random_cri_requests(kubelet, pod_daemon):
    d = pod_daemon
    workdir = str(d.workdir)
    image = kubelet.pull("busybox")
    ids: dict[str, str] = {IMG: image}
    base_n = [0]

    def ensure_targets() -> None:
        """(Re)make the pod and container the random requests name, after one of them removed or stopped it."""
        nonlocal sid, pod, cid
        try:
            d.image.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=image)), timeout=10).image.id or \
                kubelet.pull("busybox")
        except grpc.RpcError:
            kubelet.pull("busybox")
        try:
            ready = kubelet.pod_status(sid).state == cri.SANDBOX_READY if sid else False
        except grpc.RpcError:
            ready = False
        if not ready:
            base_n[0] += 1
            sid, pod = kubelet.run_pod(f"fuzzbase{base_n[0]}")
            cid = ""
        try:
            running = kubelet.status(cid).state == cri.CONTAINER_RUNNING if cid else False
        except grpc.RpcError:
            running = False
        if not running:
            cid = kubelet.start(sid, pod, f"sleeper{base_n[0]}-{time.monotonic_ns()}", "busybox",
                                command=["sleep", "3600"])
        ids.update({POD: sid, CTR: cid})

    sid, pod, cid = "", None, ""
    ensure_targets()
    outside = {top: set(os.listdir(top)) for top in (d.cwd, "/")}
    seen: dict[str, dict[str, int]] = {}
    bad: list[str] = []
    internal: list[str] = []  # INTERNAL from the daemon's own checks (not an unhandled exception): reported
    started = time.monotonic()

    pod_n = [0]

    def valid_base(name: str):
        """A request that would succeed, for the mutation half of the examples."""
        if name == "RunPodSandbox":
            pod_n[0] += 1
            return cri.RunPodSandboxRequest(config=pod_config(f"fz{pod_n[0]}", log_dir=f"{workdir}/logs"))
        if name == "CreateContainer":
            pod_n[0] += 1
            config = container_config(f"fz{pod_n[0]}", image, ["sleep", "1"], log_path=f"fz{pod_n[0]}.log")
            return cri.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=pod)
        if name == "ExecSync":
            return cri.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=5)
        return None

    @given(st.data())
    @settings(max_examples=budget(400))
    def run(data):
        svc, name, desc = data.draw(st.sampled_from(WEIGHTED), label="method")
        base = valid_base(name) if data.draw(st.booleans(), label="mutate a valid request") else None
        raw = data.draw(message(desc, density=-6 if base is not None else 3), label="fields")
        req = to_proto(getattr(cri, desc.name), raw)
        if base is not None:
            base.MergeFrom(req)
            req = base
        sanitise(req, ids, workdir)
        code, details = _call(d, svc, name, req)
        seen.setdefault(name, {}).setdefault(code.name, 0)
        seen[name][code.name] += 1
        if code == grpc.StatusCode.INTERNAL:
            internal.append(f"{name}: {details[:200]}")
        if code == grpc.StatusCode.UNKNOWN or (code == grpc.StatusCode.INTERNAL and "internal error in" in details):
            bad.append(f"{name}: {code.name} {details[:300]}\n  request: {req}")
        assert d.proc.poll() is None, f"daemon died on {name}: {req}"
        if name in DESTRUCTIVE and code == grpc.StatusCode.OK:
            ensure_targets()

    run()
    elapsed = time.monotonic() - started
    # the fuzz's finds, as fixed examples
    ensure_targets()
    code, details = _call(d, "RuntimeService", "ExecSync", cri.ExecSyncRequest(container_id=cid, cmd=["true"],
                                                                        timeout=2 ** 63 - 1))
    assert code == grpc.StatusCode.OK, (code, details)
    code, _ = _call(d, "RuntimeService", "RunPodSandbox", cri.RunPodSandboxRequest(
        config=pod_config("nul", uid="a\0b", log_dir=f"{workdir}/logs")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, code
    # still alive and answering, and the base container still there
    assert d.runtime.Version(cri.VersionRequest(), timeout=10).runtime_name
    print(f"\nCRI fuzz: {sum(sum(c.values()) for c in seen.values())} requests in {elapsed:.1f}s; by method and "
          f"status: {seen}; INTERNAL answers: {internal}")
    assert not bad, "\n".join(bad)
    assert {top: set(os.listdir(top)) - before for top, before in outside.items()} == {d.cwd: set(), "/": set()}
    tracebacks = [e for e in d.log_events() if "exception" in e]
    assert not tracebacks, tracebacks[:5]
