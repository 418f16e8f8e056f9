"""Image references, manifests/indexes and the daemon config against random and hostile input: each parser raises
only its own error type (ValueError, ManifestError, ConfigError), and what it accepts is stable (a normalised
reference parses to itself; a config rendered by to_toml loads back equal)."""

from __future__ import annotations

import json
import math
import string
import tempfile
import tomllib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pycri import config as cfgmod
from pycri.images import reference
from pycri.images.manifests import (DOCKER_LIST, DOCKER_MANIFEST, INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX,
                                    OCI_MANIFEST, ManifestError, check_manifest, decode_manifest, host_platform,
                                    select_platform)
from tests.fuzz.profiles import budget, corpus

REF = reference.Reference("fuzz.local", "fuzz/image", "latest")

# -- image references --------------------------------------------------------------------------------------------

REFS = corpus("reference")[0][1].decode().splitlines()


def check_reference(text):
    try:
        ref = reference.parse(text)
    except ValueError:
        return None
    again = reference.parse(str(ref))
    assert again == ref, f"{text!r} -> {ref} -> {again}"
    assert str(again) == str(ref)
    assert ref.domain and ref.path and (ref.tag or ref.digest) and not (ref.tag and ref.digest)
    assert ref.path == ref.path.lower()
    return ref


@pytest.mark.parametrize("text", REFS)
def test_reference_seeds(text):
    check_reference(text)


def test_reference_seed_outcomes():
    assert str(check_reference("busybox")) == "docker.io/library/busybox:latest"
    assert str(check_reference("index.docker.io/library/busybox:1.36")) == "docker.io/library/busybox:1.36"
    assert check_reference("localhost:5000/foo/bar:tag").domain == "localhost:5000"
    assert check_reference("UPPER/case").domain == "UPPER"  # an upper-case first component is a domain (docker)
    for bad in ("foo:", ":tag", "foo/../bar", "foo//bar", "-foo", "foo@sha512:abcd",
                "e2e1a1c3a2f0b8e0d7c6b5a4938271605f4e3d2c1b0a99887766554433221100"):
        assert check_reference(bad) is None, bad


_alnum = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=6)
_component = st.builds(lambda a, sep, b: a + sep + b if sep is not None else a, _alnum,
                       st.sampled_from([None, ".", "_", "__", "-", "--", "..", "/"]), _alnum)
_domain = st.one_of(st.none(), st.sampled_from(["docker.io", "index.docker.io", "localhost", "localhost:5000",
                                                "127.0.0.1:5000", "[::1]:5000", "Registry.Example.com", "a-b.c",
                                                "host:", "[zz]:1", "x.y:65536"]))
_tag = st.one_of(st.none(), st.text(string.ascii_letters + string.digits + "._-", min_size=0, max_size=130))
_digest = st.one_of(st.none(), st.builds(lambda h: "sha256:" + h, st.text("0123456789abcdefABCDEF", min_size=60,
                                                                             max_size=66)),
                    st.sampled_from(["sha512:" + "a" * 128, "md5:" + "0" * 32, "sha256:", "sha256"]))


@st.composite
def references(draw):
    dom = draw(_domain)
    path = "/".join(draw(st.lists(_component, min_size=1, max_size=4)))
    text = (dom + "/" if dom else "") + path
    tag, digest = draw(_tag), draw(_digest)
    if tag is not None:
        text += ":" + tag
    if digest is not None:
        text += "@" + digest
    return text


@given(st.one_of(references(), st.text(max_size=300), st.text(string.printable, max_size=80),
                 st.sampled_from(REFS)))
@settings(max_examples=budget(1500))
def test_reference_parse_raises_only_valueerror_and_is_idempotent(text):
    check_reference(text)


@given(st.one_of(st.text(max_size=80), st.binary(max_size=8), st.none(), st.integers()))
@settings(max_examples=budget(300))
def test_digest_validation(value):
    try:
        out = reference.validate_digest(value)
    except ValueError:
        return
    assert out == value and len(value) == 71


# -- manifests and indexes ---------------------------------------------------------------------------------------

MANIFESTS = corpus("manifest")
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False),
                       st.text(max_size=12))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=20)
_digests = st.one_of(st.sampled_from(["sha256:" + "a" * 64, "sha256:" + "A" * 64, "sha512:" + "b" * 128, "",
                                      "sha256:../../etc/passwd"]), _json)
_media = st.one_of(st.sampled_from(MANIFEST_TYPES + INDEX_TYPES + ("", "application/json", "text/html")), _json)
_descriptor = st.one_of(_json, st.fixed_dictionaries(
    {"digest": _digests, "size": st.one_of(st.integers(-5, 2 ** 64), _json)},
    optional={"mediaType": _media, "platform": st.one_of(_json, st.fixed_dictionaries(
        {"os": st.one_of(st.just("linux"), _json), "architecture": st.one_of(st.just(host_platform()[1]), _json)},
        optional={"variant": st.one_of(st.sampled_from(["", "v8", "v7"]), _json)}))}))
_manifest_doc = st.fixed_dictionaries({}, optional={
    "schemaVersion": st.one_of(st.sampled_from([1, 2]), _json), "mediaType": _media,
    "config": _descriptor, "layers": st.one_of(st.lists(_descriptor, max_size=5), _json),
    "manifests": st.one_of(st.lists(_descriptor, max_size=5), _json)})


def check_manifest_bytes(data: bytes, media_type) -> None:
    try:
        doc, kind = decode_manifest(REF, data, media_type)
    except ManifestError:
        return
    assert isinstance(doc, dict) and kind in MANIFEST_TYPES + INDEX_TYPES
    try:
        if kind in INDEX_TYPES:
            chosen = select_platform(REF, doc)
            assert isinstance(chosen, dict)
            reference.validate_digest(chosen["digest"])
        else:
            check_manifest(REF, doc)
            reference.validate_digest(doc["config"]["digest"])
    except ManifestError:
        return


@pytest.mark.parametrize("name,data", MANIFESTS, ids=[n for n, _ in MANIFESTS])
@pytest.mark.parametrize("media_type", ["", OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
def test_manifest_seeds(name, data, media_type):
    check_manifest_bytes(data, media_type)


@given(st.one_of(_manifest_doc.map(lambda d: json.dumps(d).encode()), _json.map(lambda d: json.dumps(d).encode()),
                 st.binary(max_size=200), st.sampled_from([d for _, d in MANIFESTS])), _media)
@settings(max_examples=budget(600))
def test_manifest_parsing_raises_only_manifesterror(data, media_type):
    check_manifest_bytes(data, media_type)


@given(st.sampled_from([d for _, d in MANIFESTS]), st.lists(st.tuples(st.integers(0, 4096), st.characters()),
                                                             min_size=1, max_size=6))
@settings(max_examples=budget(500))
def test_mutated_manifest_seeds(data, edits):
    text = list(data.decode())
    for pos, ch in edits:
        text[pos % len(text)] = ch
    check_manifest_bytes("".join(text).encode("utf-8", "surrogatepass"), "")


# -- config ------------------------------------------------------------------------------------------------------

CONFIGS = corpus("config")
_toml_leaf = st.one_of(st.booleans(), st.integers(-2 ** 63, 2 ** 63 - 1), st.floats(), st.text(max_size=20),
                       st.sampled_from(["/abs/path", "127.0.0.1", "::1", "10.0.0.0/8", "oci", "builtin", "systemd",
                                        "debug", "http://m", "[::1]:1", "1.2.3.4:0"]))
_toml_value = st.recursive(_toml_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)), max_leaves=10)
_known_keys = [f.name for f in cfgmod.dataclasses.fields(cfgmod.Config)]
_table_keys = {"cni": cfgmod.CNIConfig, "cgroup": cfgmod.CgroupConfig, "streaming": cfgmod.StreamingConfig,
               "metrics": cfgmod.MetricsConfig, "cdi": cfgmod.CDIConfig}


@st.composite
def config_dicts(draw):
    """Mostly known keys with random values, sometimes well-typed sub-tables, sometimes unknown keys."""
    out = {}
    for key in draw(st.lists(st.sampled_from(_known_keys + ["bogus"]), max_size=6, unique=True)):
        if key in _table_keys and draw(st.booleans()):
            fields = [f.name for f in cfgmod.dataclasses.fields(_table_keys[key])]
            out[key] = draw(st.dictionaries(st.sampled_from(fields + ["zzz"]), _toml_value, max_size=4))
        elif key in ("registries", "runtimes") and draw(st.booleans()):
            sub = st.dictionaries(st.sampled_from(["mirrors", "insecure", "fallback_to_host", "type", "path"]),
                                  _toml_value, max_size=3)
            out[key] = draw(st.dictionaries(st.text(max_size=12), sub, max_size=3))
        else:
            out[key] = draw(_toml_value)
    return out


def check_config_dict(data) -> None:
    try:
        cfg = cfgmod.from_dict(data)
    except cfgmod.ConfigError:
        return
    assert cfg.image_pull_progress_timeout > 0
    rendered = cfgmod.to_toml(cfg)
    again = cfgmod.from_dict(tomllib.loads(rendered))
    assert again == cfg, rendered


@pytest.mark.parametrize("name,data", CONFIGS, ids=[n for n, _ in CONFIGS])
def test_config_seeds(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    try:
        cfgmod.load(path)
    except cfgmod.ConfigError:
        pass


@given(st.one_of(config_dicts(), st.dictionaries(st.text(max_size=10), _toml_value, max_size=4)))
@example({"image_pull_progress_timeout": math.nan})  # found: nan passed the `<= 0` check
@example({"image_pull_progress_timeout": math.inf})
@example({"streaming": {"port": 2 ** 70}})
@settings(max_examples=budget(600))
def test_config_dicts_raise_only_configerror(data):
    check_config_dict(data)


@given(st.one_of(st.text(max_size=300), st.sampled_from([d.decode(errors="replace") for _, d in CONFIGS])))
@settings(max_examples=budget(300))
def test_config_text_raises_only_configerror(text):
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(text)
        f.flush()
        try:
            cfg = cfgmod.load(f.name)
        except cfgmod.ConfigError:
            return
    assert not math.isnan(cfg.image_pull_progress_timeout)


@pytest.mark.parametrize("text", ["a" * 250 + "!", "a-" * 120 + "!", "a" * 40 + "/" + "b" * 40 + "$",
                                  "x.y/" + "a_" * 100 + "A", "a" * 120 + ":" + "t" * 130])
def test_reference_parsing_is_linear(text):
    """Found by the fuzzer: the separator `[-]*` made the path regex backtrack exponentially (22 characters and a
    `!` took 36 s), so one PullImage with such a name stalled a daemon thread for hours."""
    import time
    start = time.monotonic()
    check_reference(text)
    assert time.monotonic() - start < 1.0
