"""Reference parsing and normalisation (the docker reference library's rules, as kubelet and containerd use)."""

import pytest

from pycri.images.reference import Reference, is_image_id, parse

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, expected", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/busybox:1", "docker.io/library/busybox:1"),
    ("user/app", "docker.io/user/app:latest"),
    ("docker.io/user/app:v1", "docker.io/user/app:v1"),
    ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/a/b/c:t", "localhost:5000/a/b/c:t"),
    ("127.0.0.1:5000/pycri-test/busybox", "127.0.0.1:5000/pycri-test/busybox:latest"),
    ("[::1]:5000/app:x", "[::1]:5000/app:x"),
    ("quay.io/a_b/c__d/e-f.g:T_1.2-3", "quay.io/a_b/c__d/e-f.g:T_1.2-3"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}"),
    # a tag and a digest: the digest wins, the tag is dropped (ParseDockerRef)
    (f"busybox:1.36@{D}", f"docker.io/library/busybox@{D}"),
    (f"127.0.0.1:5000/x:t@{D}", f"127.0.0.1:5000/x@{D}"),
    ("Example.com/app", "Example.com/app:latest"),  # domains may be mixed case, paths not
])
def test_normalise(text, expected):
    assert str(parse(text)) == expected


def test_parts():
    ref = parse("localhost:5000/a/b:t")
    assert ref == Reference("localhost:5000", "a/b", "t", None)
    assert ref.name == "localhost:5000/a/b" and ref.object == "t"
    dig = parse(f"a@{D}")
    assert dig.tag is None and dig.digest == D and dig.object == D


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("Busybox", "lowercase"),
    ("docker.io/Library/busybox", "lowercase"),
    ("busybox:", "tag"),
    ("busybox:-x", "tag"),
    ("busybox:" + "x" * 129, "tag"),
    ("busybox@sha256:abc", "digest"),
    (f"busybox@sha256:{'A' * 64}", "sha256"),
    ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("a" * 64, "64-byte hexadecimal"),
    ("busy box", "whitespace"),
    (" busybox", "whitespace"),
    ("busybox\n", "whitespace"),
    ("/busybox", "invalid"),
    ("busybox/", "invalid"),
    ("a//b", "invalid"),
    ("a/../b", "invalid"),
    ("-a/b", "invalid"),
    ("foo_/bar", "invalid"),
    ("host:port/app", "domain"),
    ("x" * 256, "longer"),
    (":tag", "no repository"),
    ("@" + D, "no repository"),
])
def test_invalid(text, message):
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_non_string():
    with pytest.raises(ValueError):
        parse(None)  # type: ignore[arg-type]


def test_image_id():
    assert is_image_id(D) and is_image_id("a" * 64)
    assert not is_image_id("sha256:" + "a" * 63) and not is_image_id("busybox")
