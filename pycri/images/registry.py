"""A client for the OCI distribution API: resolve a reference to a platform manifest and open blobs.

httpx because it gives HTTP/1.1 keep-alive connection pools shared across a pull's parallel layer downloads,
streaming response bodies (layers never sit in memory), per-phase timeouts (the read timeout is our progress
timeout: no byte for N seconds fails the download) and cross-origin-safe redirect handling (the Authorization
header is dropped when a blob redirects to storage on another host).

Endpoints for a domain: its configured mirrors in order, then the domain itself (docker.io is served by
registry-1.docker.io) unless `fallback_to_host` is off. A mirror given as http://... is plain HTTP; the domain
itself is plain HTTP when configured `insecure` or when it is a loopback host (as containerd's CRI does), otherwise
HTTPS. Blobs come from the endpoint that resolved the manifest, then the others in order.
Auth: on a 401 the WWW-Authenticate challenge decides; Basic sends the credentials, Bearer fetches a token from the
realm (GET with basic credentials, or an OAuth2 refresh-token POST with an identity token), or uses a registry token
as the bearer directly. Tokens are cached per host, scope and credentials.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import httpx

from ..log import get as get_logger
from .content import ResumeRejected
from .manifests import (DOCKER_LIST, DOCKER_MANIFEST, INDEX_TYPES, MANIFEST_TYPES, MAX_MANIFEST_SIZE, OCI_INDEX,
                        OCI_MANIFEST, check_manifest, decode_manifest, select_platform)
from .reference import Reference

log = get_logger("images.registry")

ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST]) + ", */*;q=0.1"


class RegistryError(Exception):
    """A pull failed talking to the registry; the message says which image, host and object."""


class NotFoundError(RegistryError):
    pass


class AuthError(RegistryError):
    pass


@dataclass(frozen=True)
class Credentials:
    """What the CRI AuthConfig carries, normalised."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    server_address: str = ""

    @classmethod
    def from_auth(cls, auth: Any) -> "Credentials | None":
        """Accept a dict or an object with AuthConfig's fields; `auth` is base64 "user:pass"."""
        if not auth:
            return None
        get = (lambda k: auth.get(k) or "") if isinstance(auth, dict) else (lambda k: getattr(auth, k, "") or "")
        username, password = get("username"), get("password")
        if get("auth") and not username:
            try:
                decoded = base64.b64decode(get("auth"), validate=True).decode()
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError("invalid auth in AuthConfig: not base64 of user:password") from exc
            username, sep, password = decoded.partition(":")
            if not sep:
                raise ValueError("invalid auth in AuthConfig: decoded value has no ':'")
        server = get("server_address")
        if server:
            server = urlsplit(server if "://" in server else f"//{server}").netloc or server
        creds = cls(username, password, get("identity_token"), get("registry_token"), server)
        return creds if (username or creds.identity_token or creds.registry_token) else None

    def applies_to(self, host: str) -> bool:
        return not self.server_address or self.server_address == host

    @property
    def key(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Endpoint:
    base: str  # e.g. http://127.0.0.1:5000/v2
    host: str
    mirror: bool

    def url(self, repository: str, kind: str, obj: str) -> str:
        return f"{self.base}/{repository}/{kind}/{obj}"


@dataclass
class Resolved:
    """What a reference resolved to: `digest` is what the tag pointed at (index or manifest), for RepoDigests."""

    ref: Reference
    digest: str
    media_type: str
    manifest_digest: str
    manifest: dict
    raw: dict[str, bytes]  # digest -> exact bytes of the index and manifest fetched
    endpoint: Endpoint
    endpoints: list[Endpoint]


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(name).is_loopback
    return False


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    params.update({k.lower(): v for k, v in re.findall(r'(\w+)=([^",\s]+)', rest) if k.lower() not in params})
    return scheme.lower(), params


class RegistryClient:
    """One per daemon: owns the connection pool and the token cache."""

    def __init__(self, registries: dict | None = None, *, progress_timeout: float = 300.0,
                 max_connections: int = 16) -> None:
        self.registries = registries or {}
        self.progress_timeout = progress_timeout
        timeout = httpx.Timeout(connect=min(30.0, progress_timeout), read=progress_timeout,
                                write=progress_timeout, pool=None)
        # The system trust store (not certifi's bundle), so a registry CA added to the host is trusted.
        self.http = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False,
                                      verify=ssl.create_default_context(),
                                      limits=httpx.Limits(max_connections=max_connections,
                                                          max_keepalive_connections=max_connections),
                                      headers={"User-Agent": "pycri/0.1"})
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self.requests = 0

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- endpoints -------------------------------------------------------------------------------------------
    def _registry_config(self, host: str) -> Any:
        return self.registries.get(host)

    def endpoints(self, domain: str) -> list[Endpoint]:
        result = []
        cfg = self._registry_config(domain)
        for mirror in getattr(cfg, "mirrors", None) or []:
            result.append(self._endpoint(mirror, mirror=True))
        if result and not getattr(cfg, "fallback_to_host", True):
            return result
        host = "registry-1.docker.io" if domain == "docker.io" else domain
        insecure = bool(getattr(cfg, "insecure", False))
        scheme = "http" if insecure or is_loopback(host) else "https"
        result.append(Endpoint(f"{scheme}://{host}/v2", host, False))
        return result

    def _endpoint(self, spec: str, *, mirror: bool) -> Endpoint:
        if "://" not in spec:
            mirror_cfg = self._registry_config(spec.split("/", 1)[0])
            insecure = bool(getattr(mirror_cfg, "insecure", False)) or is_loopback(spec.split("/", 1)[0])
            spec = ("http://" if insecure else "https://") + spec
        parts = urlsplit(spec)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"invalid mirror endpoint {spec!r}")
        path = parts.path.rstrip("/")
        if not path.endswith("/v2"):
            path += "/v2"
        return Endpoint(f"{parts.scheme}://{parts.netloc}{path}", parts.netloc, mirror)

    # -- requests with auth ----------------------------------------------------------------------------------
    async def _send(self, ep: Endpoint, method: str, url: str, repository: str, creds: Credentials | None,
                    headers: dict[str, str] | None = None) -> httpx.Response:
        """Send with auth, answering one 401 challenge; returns a streaming response the caller closes."""
        scope = f"repository:{repository}:pull"
        if creds is not None and not creds.applies_to(ep.host):
            creds = None
        hdrs = dict(headers or {})
        cached = self._cached_auth(ep.host, scope, creds)
        if cached:
            hdrs["Authorization"] = cached
        for attempt in range(2):
            self.requests += 1
            request = self.http.build_request(method, url, headers=hdrs)
            response = await self.http.send(request, stream=True, follow_redirects=True)
            if response.status_code != 401 or attempt == 1:
                return response
            challenge = response.headers.get("www-authenticate", "")
            await response.aclose()
            hdrs["Authorization"] = await self._authorize(ep, challenge, scope, creds)
        raise AssertionError("unreachable")

    def _cached_auth(self, host: str, scope: str, creds: Credentials | None) -> str | None:
        key = (host, scope, creds.key if creds else "")
        entry = self._tokens.get(key)
        if entry and entry[1] > time.monotonic():
            return entry[0]
        return None

    async def _authorize(self, ep: Endpoint, challenge: str, scope: str, creds: Credentials | None) -> str:
        scheme, params = _parse_challenge(challenge)
        if creds is not None and not creds.applies_to(ep.host):
            creds = None
        key = (ep.host, scope, creds.key if creds else "")
        if scheme == "basic":
            if not creds or not creds.username:
                raise AuthError(f"{ep.host}: registry requires credentials (basic auth) and none were given")
            value = "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            self._tokens[key] = (value, time.monotonic() + 3600)
            return value
        if scheme != "bearer":
            raise AuthError(f"{ep.host}: unsupported auth challenge {challenge!r}")
        if creds and creds.registry_token:
            value = f"Bearer {creds.registry_token}"
            self._tokens[key] = (value, time.monotonic() + 3600)
            return value
        realm = params.get("realm", "")
        if urlsplit(realm).scheme not in ("http", "https"):
            raise AuthError(f"{ep.host}: bearer challenge without a usable realm: {challenge!r}")
        scopes = [scope] + [s for s in params.get("scope", "").split(" ") if s and s != scope]
        form: dict[str, Any] = {"scope": scopes}
        if params.get("service"):
            form["service"] = params["service"]
        try:
            if creds and creds.identity_token:
                form.update(grant_type="refresh_token", refresh_token=creds.identity_token, client_id="pycri")
                response = await self.http.post(realm, data=form)
            else:
                auth = (creds.username, creds.password) if creds and creds.username else None
                response = await self.http.get(realm, params=form, auth=auth)
        except httpx.HTTPError as exc:
            raise AuthError(f"{ep.host}: token request to {realm} failed: {exc!r}") from exc
        if response.status_code in (401, 403):
            raise AuthError(f"{ep.host}: token server {realm} refused the credentials ({response.status_code})")
        if response.status_code != 200:
            raise AuthError(f"{ep.host}: token server {realm} answered {response.status_code}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            expires = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError) as exc:
            raise AuthError(f"{ep.host}: token server {realm} sent an invalid answer") from exc
        if not token or not isinstance(token, str):
            raise AuthError(f"{ep.host}: token server {realm} sent no token")
        value = f"Bearer {token}"
        self._tokens[key] = (value, time.monotonic() + max(1.0, expires - 10))
        return value

    # -- manifests -------------------------------------------------------------------------------------------
    async def _get_manifest(self, ep: Endpoint, ref: Reference, obj: str, creds: Credentials | None
                            ) -> tuple[str, str, bytes]:
        url = ep.url(ref.path, "manifests", obj)
        try:
            response = await self._send(ep, "GET", url, ref.path, creds, {"Accept": ACCEPT})
            try:
                if response.status_code == 404:
                    raise NotFoundError(f"{ref}: manifest {obj} not found on {ep.host}")
                if response.status_code in (401, 403):
                    raise AuthError(f"{ref}: access to {ep.host} denied ({response.status_code})")
                if response.status_code != 200:
                    raise RegistryError(f"{ref}: {ep.host} answered {response.status_code} for manifest {obj}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_MANIFEST_SIZE:
                        raise RegistryError(f"{ref}: manifest {obj} on {ep.host} is larger than 4 MiB")
                header_digest = response.headers.get("docker-content-digest", "")
                media_type = response.headers.get("content-type", "").split(";")[0].strip()
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise RegistryError(f"{ref}: timed out fetching manifest {obj} from {ep.host}") from exc
        except httpx.HTTPError as exc:
            raise RegistryError(f"{ref}: fetching manifest {obj} from {ep.host} failed: {exc!r}") from exc
        data = bytes(body)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if obj.startswith("sha256:") and digest != obj:
            raise RegistryError(f"{ref}: manifest from {ep.host} has digest {digest}, expected {obj}")
        if header_digest.startswith("sha256:") and header_digest != digest:
            raise RegistryError(f"{ref}: manifest digest {digest} differs from Docker-Content-Digest {header_digest}")
        return digest, media_type, data

    async def resolve(self, ref: Reference, creds: Credentials | None = None) -> Resolved:
        """Find the reference on the first endpoint that has it and select this host's platform manifest."""
        errors = []
        endpoints = self.endpoints(ref.domain)
        for ep in endpoints:
            try:
                digest, media_type, data = await self._get_manifest(ep, ref, ref.object, creds)
            except RegistryError as exc:
                errors.append(str(exc))
                log.info("manifest endpoint failed", image=str(ref), endpoint=ep.base, error=str(exc))
                if ep.mirror:
                    continue
                if len(errors) == 1:
                    raise
                raise type(exc)("; ".join(errors)) from exc  # keeps NotFound/Auth for the caller's status
            return await self._select(ref, ep, endpoints, digest, media_type, data, creds)
        raise RegistryError("; ".join(errors) or f"{ref}: no endpoint")

    async def _select(self, ref: Reference, ep: Endpoint, endpoints: list[Endpoint], digest: str,
                      media_type: str, data: bytes, creds: Credentials | None) -> Resolved:
        raw = {digest: data}
        doc, media_type = decode_manifest(ref, data, media_type)
        manifest_digest = digest
        top_type = media_type
        if media_type in INDEX_TYPES:
            chosen = select_platform(ref, doc)
            manifest_digest = chosen["digest"]
            sub_digest, sub_type, sub_data = await self._get_manifest(ep, ref, manifest_digest, creds)
            if isinstance(chosen.get("size"), int) and chosen["size"] != len(sub_data):
                raise RegistryError(f"{ref}: manifest {manifest_digest} has {len(sub_data)} bytes, the index says "
                                    f"{chosen['size']}")
            raw[sub_digest] = sub_data
            doc, sub_type = decode_manifest(ref, sub_data, sub_type or chosen.get("mediaType", ""))
            if sub_type not in MANIFEST_TYPES:
                raise RegistryError(f"{ref}: index entry {manifest_digest} is not an image manifest ({sub_type})")
        check_manifest(ref, doc)
        return Resolved(ref, digest, top_type, manifest_digest, doc, raw, ep, endpoints)

    # -- blobs -----------------------------------------------------------------------------------------------
    def blob_opener(self, resolved: Resolved, digest: str, creds: Credentials | None, label: str):
        """An opener for ContentStore.fetch: GET the blob (with a Range from `offset`), following redirects."""
        ref = resolved.ref
        order = [resolved.endpoint] + [e for e in resolved.endpoints if e != resolved.endpoint]

        @contextlib.asynccontextmanager
        async def opener(offset: int):
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            errors = []
            for ep in order:
                try:
                    response = await self._send(ep, "GET", ep.url(ref.path, "blobs", digest), ref.path, creds,
                                                headers)
                except httpx.TimeoutException:
                    errors.append(f"{label} {digest}: no answer from {ep.host} within {self.progress_timeout}s")
                    continue
                except httpx.HTTPError as exc:
                    errors.append(f"{label} {digest}: {ep.host}: {exc!r}")
                    continue
                if response.status_code == 416 and offset:
                    await response.aclose()
                    raise ResumeRejected(f"{label} {digest}: {ep.host} cannot resume at byte {offset}")
                if response.status_code not in (200, 206):
                    await response.aclose()
                    errors.append(f"{label} {digest}: {ep.host} answered {response.status_code}")
                    continue
                start = offset if response.status_code == 206 and _range_start(response) == offset else 0
                try:
                    yield start, self._chunks(response, ref, digest, label, ep)
                finally:
                    await response.aclose()
                return
            raise RegistryError(f"{ref}: " + "; ".join(errors))

        return opener

    async def _chunks(self, response: httpx.Response, ref: Reference, digest: str, label: str,
                      ep: Endpoint) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.ReadTimeout as exc:
            raise RegistryError(
                f"{ref}: pulling {label} {digest} from {ep.host} stalled: no data for {self.progress_timeout:g}s"
            ) from exc
        except httpx.HTTPError as exc:
            raise RegistryError(f"{ref}: pulling {label} {digest} from {ep.host} failed: {exc!r}") from exc


def _range_start(response: httpx.Response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("content-range", ""))
    return int(match.group(1)) if match else None
