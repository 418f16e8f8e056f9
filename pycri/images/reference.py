"""Image references, parsed and normalised like the docker reference library the kubelet and containerd use.

Grammar (distribution/reference):
    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [domain "/"] path-component ["/" path-component]*
    domain     := host [":" port]        host: dns labels, or an IPv6 literal in brackets
    path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"* ) [a-z0-9]+ )*
    tag        := [\\w][\\w.-]{0,127}
    digest     := algorithm ":" hex      (sha256: exactly 64 lowercase hex)

Normalisation (ParseDockerRef): the first component is a domain only if it contains "." or ":", or is "localhost"
(and is not upper case); otherwise the domain is docker.io. On docker.io a single-component path gets "library/".
"index.docker.io" becomes "docker.io". No tag and no digest means ":latest". A reference with both a tag and a digest
keeps only the digest (the digest decides what is pulled; containerd drops the tag the same way).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
# distribution's separator is `[._]|__|[-]*`; an empty one only joins two alnum runs, which [a-z0-9]+ does by itself,
# so `-+` accepts the same names without the exponential backtracking Python's re (unlike Go's RE2) does on
# `aaaa...a!` with a possibly-empty separator between `+` runs.
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"

_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_RE = re.compile(_DOMAIN)
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_HEX64_RE = re.compile(r"[a-f0-9]{64}")
_SHA256_RE = re.compile(r"sha256:[a-f0-9]{64}")


@dataclass(frozen=True)
class Reference:
    """A normalised reference: `domain/path[:tag][@digest]`."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository name with its domain, e.g. docker.io/library/busybox."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def object(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest if there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.domain, self.path, None, validate_digest(digest))


def validate_digest(digest: str) -> str:
    """Check a digest string; only sha256 is accepted (it becomes a file name in the content store)."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"invalid digest format: {digest!r}")
    if not _SHA256_RE.fullmatch(digest):
        algorithm = digest.split(":", 1)[0]
        if algorithm == "sha256":
            raise ValueError(f"invalid digest {digest!r}: sha256 needs 64 lowercase hex characters")
        raise ValueError(f"unsupported digest algorithm {algorithm!r} in {digest!r}")
    return digest


def is_image_id(text: str) -> bool:
    """True for a full image id, `sha256:<64 hex>` or the bare 64 hex characters."""
    return bool(_SHA256_RE.fullmatch(text) or _HEX64_RE.fullmatch(text))


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or (not any(c in first for c in ".:") and first != "localhost" and first.lower() == first):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse(text: str) -> Reference:
    """Parse and normalise `text`; raise ValueError saying what is wrong with it."""
    if not isinstance(text, str):
        raise ValueError(f"invalid reference: expected a string, got {type(text).__name__}")
    if not text:
        raise ValueError("invalid reference format: empty image reference")
    if text != text.strip() or any(c.isspace() or ord(c) < 0x20 for c in text):
        raise ValueError(f"invalid reference format: {text!r} contains whitespace or control characters")
    if _HEX64_RE.fullmatch(text):
        raise ValueError(f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings")

    name, at, digest = text.partition("@")
    if at:
        validate_digest(digest)
    else:
        digest = None
    tag = None
    # A tag follows the last ':' that is after the last '/' (a ':' before it belongs to a domain's port).
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(f"invalid reference format: invalid tag {tag!r} in {text!r}")
    if not name:
        raise ValueError(f"invalid reference format: {text!r} has no repository name")
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise ValueError(f"invalid reference format: repository name longer than {NAME_TOTAL_LENGTH_MAX} characters")

    domain, path = _split_domain(name)
    if path.lower() != path:
        raise ValueError(f"invalid reference format: repository name must be lowercase: {text!r}")
    if not _DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"invalid reference format: invalid domain {domain!r} in {text!r}")
    if not _PATH_RE.fullmatch(path):
        raise ValueError(f"invalid reference format: invalid repository path {path!r} in {text!r}")
    if len(f"{domain}/{path}") > NAME_TOTAL_LENGTH_MAX:
        raise ValueError(f"invalid reference format: repository name longer than {NAME_TOTAL_LENGTH_MAX} characters")

    if digest:
        tag = None
    elif not tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)

