"""The CRI wire contract: proto/api.proto and the generated stubs must match upstream runtime.v1 exactly.

tests/cri_contract.py is a table derived from upstream's api.proto text (hack/derive_cri_contract.py, which parses
the text without protoc). Here the descriptor that protoc built from proto/api.proto (the one the daemon serves) is
checked against that table in both directions, and the imported stubs are checked to be current with proto/api.proto.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import struct
import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load_contract():
    spec = importlib.util.spec_from_file_location("cri_contract", pathlib.Path(__file__).with_name("cri_contract.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


C = _load_contract()
PROTO = REPO / "proto" / "api.proto"
PKG = "runtime.v1"
RUNTIME = f"{PKG}.RuntimeService"
IMAGE = f"{PKG}.ImageService"
# Upstream kubernetes master (cri-api, 1.36+ cycle): 35 RuntimeService + 6 ImageService rpcs, the six Stream* list
# rpcs of KEP-5825 included.
EXPECTED_RPCS = {RUNTIME: 35, IMAGE: 6}

FDP = descriptor_pb2.FieldDescriptorProto


def _api_pb2():
    from pycri.api import api_pb2

    return api_pb2


def _file_proto() -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(_api_pb2().DESCRIPTOR.serialized_pb)


def _field_entry(msg: descriptor_pb2.DescriptorProto, f: descriptor_pb2.FieldDescriptorProto, map_entries: dict):
    def tname(field):
        if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM, FDP.TYPE_GROUP):
            return field.type_name.lstrip(".")
        return FDP.Type.Name(field.type)[len("TYPE_"):].lower()

    oneof = None
    if f.HasField("oneof_index") and not f.proto3_optional:
        oneof = msg.oneof_decl[f.oneof_index].name
    if f.type == FDP.TYPE_MESSAGE and f.type_name.lstrip(".") in map_entries:
        entry = map_entries[f.type_name.lstrip(".")]
        key, value = sorted(entry.field, key=lambda x: x.number)
        assert (key.name, key.number, value.name, value.number) == ("key", 1, "value", 2)
        return (f.number, "map", "repeated", (tname(key), tname(value)), oneof)
    if f.label == FDP.LABEL_REPEATED:
        label = "repeated"
    elif f.proto3_optional:
        label = "optional"
    else:
        label = "singular"
    return (f.number, tname(f), label, None, oneof)


def _walk(fp: descriptor_pb2.FileDescriptorProto):
    """(messages, enums, field options) of the compiled file, declaration order, map-entry types folded into fields."""
    messages: dict[str, dict] = {}
    enums: dict[str, dict] = {}
    options: dict[str, dict] = {}

    def add_enum(scope: str, e: descriptor_pb2.EnumDescriptorProto) -> None:
        enums[f"{scope}.{e.name}"] = {v.name: v.number for v in e.value}

    def add_msg(scope: str, m: descriptor_pb2.DescriptorProto) -> None:
        name = f"{scope}.{m.name}"
        map_entries = {f"{name}.{n.name}": n for n in m.nested_type if n.options.map_entry}
        messages[name] = {f.name: _field_entry(m, f, map_entries) for f in m.field}
        for f in m.field:
            opts = {}
            if f.options.HasField("deprecated"):
                opts["deprecated"] = f.options.deprecated
            if f.options.HasField("debug_redact"):
                opts["debug_redact"] = f.options.debug_redact
            if opts:
                options[f"{name}.{f.name}"] = opts
        for n in m.nested_type:
            if not n.options.map_entry:
                add_msg(name, n)
        for e in m.enum_type:
            add_enum(name, e)

    for m in fp.message_type:
        add_msg(fp.package, m)
    for e in fp.enum_type:
        add_enum(fp.package, e)
    return messages, enums, options


@pytest.fixture(scope="module")
def fp() -> descriptor_pb2.FileDescriptorProto:
    return _file_proto()


@pytest.fixture(scope="module")
def walked(fp):
    return _walk(fp)


def _diff_tables(kind: str, expected: dict, actual: dict) -> list[str]:
    problems = []
    for name in expected.keys() - actual.keys():
        problems.append(f"{kind} missing from proto: {name}")
    for name in actual.keys() - expected.keys():
        problems.append(f"{kind} not in upstream: {name}")
    for name in expected.keys() & actual.keys():
        exp, act = expected[name], actual[name]
        for item in exp.keys() - act.keys():
            problems.append(f"{name}.{item}: missing from proto (upstream {exp[item]!r})")
        for item in act.keys() - exp.keys():
            problems.append(f"{name}.{item}: not in upstream (proto {act[item]!r})")
        for item in exp.keys() & act.keys():
            if exp[item] != act[item]:
                problems.append(f"{name}.{item}: upstream {exp[item]!r} != proto {act[item]!r}")
    return sorted(problems)


def test_file_header(fp):
    assert fp.package == C.PACKAGE == PKG
    assert fp.syntax == "proto3"
    assert fp.options.go_package == "k8s.io/cri-api/pkg/apis/runtime/v1"
    assert list(fp.dependency) == [], "the CRI proto imports nothing (no gogoproto, no well-known types)"
    assert fp.name == "pycri/api/api.proto"


def test_services_exact(fp):
    actual = {
        f"{fp.package}.{s.name}": {
            m.name: (m.input_type.lstrip("."), m.output_type.lstrip("."), m.client_streaming, m.server_streaming)
            for m in s.method
        }
        for s in fp.service
    }
    assert set(actual) == {RUNTIME, IMAGE} == set(C.SERVICES)
    assert {k: len(v) for k, v in C.SERVICES.items()} == EXPECTED_RPCS
    assert {k: len(v) for k, v in actual.items()} == EXPECTED_RPCS
    assert sum(len(v) for v in actual.values()) == 41
    assert _diff_tables("service", C.SERVICES, actual) == []
    for svc in C.SERVICES:  # declaration order too
        assert list(actual[svc]) == list(C.SERVICES[svc])


def test_services_match_runtime_descriptor():
    """The service descriptors the server registers (python objects) agree with the table, streaming flags included."""
    d = _api_pb2().DESCRIPTOR
    assert set(d.services_by_name) == {"RuntimeService", "ImageService"}
    for sname, svc in d.services_by_name.items():
        table = C.SERVICES[svc.full_name]
        assert [m.name for m in svc.methods] == list(table)
        for m in svc.methods:
            assert (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming) == table[
                m.name
            ], f"{sname}.{m.name}"


def test_messages_both_directions(walked):
    messages, _, _ = walked
    assert _diff_tables("message", C.MESSAGES, messages) == []
    assert len(messages) == len(C.MESSAGES)


def test_enums_both_directions(walked):
    _, enums, _ = walked
    assert _diff_tables("enum", C.ENUMS, enums) == []


def test_declaration_order(fp, walked):
    messages, enums, _ = walked
    top_msgs = [f"{fp.package}.{m.name}" for m in fp.message_type]
    top_enums = [f"{fp.package}.{e.name}" for e in fp.enum_type]
    assert len(top_msgs) == C.TOP_LEVEL_MESSAGES
    assert len(top_enums) == C.TOP_LEVEL_ENUMS
    assert top_msgs == [n for n in C.MESSAGES if n.count(".") == 2]
    assert top_enums == [n for n in C.ENUMS if n.count(".") == 2]
    for name, fields in C.MESSAGES.items():
        assert list(messages[name]) == list(fields), name
    for name, values in C.ENUMS.items():
        assert list(enums[name]) == list(values), name


def test_field_options(walked):
    _, _, options = walked
    assert options == C.FIELD_OPTIONS


def test_every_message_and_enum_is_reachable_by_python_name():
    mod = _api_pb2()
    for name in C.MESSAGES:
        parts = name[len(PKG) + 1:].split(".")
        obj = getattr(mod, parts[0])
        for p in parts[1:]:
            obj = getattr(obj, p)
        assert obj.DESCRIPTOR.full_name == name
    for name in C.ENUMS:
        assert mod.DESCRIPTOR.pool.FindEnumTypeByName(name).full_name == name


def test_wire_bytes_sample():
    """A few hand-encoded messages: field numbers, wire types, packed repeated scalars, maps, enums."""
    m = _api_pb2()
    assert m.RunPodSandboxResponse(pod_sandbox_id="ab").SerializeToString() == b"\x0a\x02ab"
    assert m.PortForwardRequest(pod_sandbox_id="p", port=[80, 443]).SerializeToString() == b"\x0a\x01p\x12\x03\x50\xbb\x03"
    assert m.ContainerFilter(label_selector={"k": "v"}).SerializeToString() == b"\x22\x06\x0a\x01k\x12\x01v"
    assert m.ContainerStatus(stop_signal=m.SIGKILL).SerializeToString() == b"\x98\x01\x0d"
    assert m.ImageSpec(image_ref="x").SerializeToString() == b"\xa2\x01\x01x"
    assert m.PsiData(Avg10=1.5).SerializeToString() == b"\x11" + struct.pack("<d", 1.5)


def _protoc(out: pathlib.Path, *extra: str) -> None:
    from grpc_tools import protoc  # dev dependency

    args = [
        "grpc_tools.protoc",
        f"-Ipycri/api={PROTO.parent}",
        *extra,
        "pycri/api/api.proto",
    ]
    rc = protoc.main(args)
    assert rc == 0, f"protoc failed ({rc}) on {PROTO}"


def _serialized_file(pb2_source: str) -> bytes:
    """The bytes passed to AddSerializedFile(...) in a generated *_pb2.py."""
    for node in ast.walk(ast.parse(pb2_source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise AssertionError("no AddSerializedFile call in generated module")


def test_generated_stubs_are_current(tmp_path):
    """Regenerate from proto/api.proto and compare with what `import pycri.api.api_pb2` loads."""
    pytest.importorskip("grpc_tools")
    _protoc(tmp_path, f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}")
    fresh = (tmp_path / "pycri" / "api" / "api_pb2.py").read_text()
    mod = _api_pb2()
    assert _serialized_file(fresh) == mod.DESCRIPTOR.serialized_pb, (
        "pycri/api/api_pb2.py is stale: run `python -m pycri.api.generate`"
    )
    # The gRPC stubs carry the method paths and streaming kinds: they must be current too.
    installed = pathlib.Path(mod.__file__).parent
    for name in ("api_pb2_grpc.py", "api_pb2.pyi"):
        assert (tmp_path / "pycri" / "api" / name).read_text() == (installed / name).read_text(), (
            f"pycri/api/{name} is stale: run `python -m pycri.api.generate`"
        )


def test_descriptor_set_matches_module(tmp_path):
    """protoc's own FileDescriptorProto for proto/api.proto equals the module's (independent of the python generator)."""
    pytest.importorskip("grpc_tools")
    out = tmp_path / "api.pb"
    _protoc(tmp_path, f"--descriptor_set_out={out}")
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert len(fds.file) == 1
    fresh = fds.file[0]
    fresh.ClearField("source_code_info")

    def strip_json_names(msgs):  # the python generator drops json_name from the embedded descriptor
        for m in msgs:
            for f in m.field:
                f.ClearField("json_name")
            strip_json_names(m.nested_type)

    strip_json_names(fresh.message_type)
    assert fresh == _file_proto()


def test_derive_script_reproduces_table(tmp_path):
    """hack/derive_cri_contract.py, run on proto/api.proto, yields the same contract as the committed table."""
    script = REPO / "hack" / "derive_cri_contract.py"
    if not script.exists():
        pytest.skip("derive script not present")
    res = subprocess.run([sys.executable, str(script), str(PROTO)], capture_output=True, text=True, check=True)
    ns: dict = {}
    exec(compile(res.stdout, "derived", "exec"), ns)
    for key in ("PACKAGE", "SERVICES", "MESSAGES", "ENUMS", "FIELD_OPTIONS", "TOP_LEVEL_MESSAGES", "TOP_LEVEL_ENUMS"):
        assert ns[key] == getattr(C, key), key
