"""The gRPC method table: every CRI method, wrapped with logging and error mapping.

Handlers are built from the proto descriptor rather than the generated *Servicer base classes, so that a method
our servicer does not define answers UNIMPLEMENTED cleanly (the base classes raise NotImplementedError, which
grpc.aio reports as UNKNOWN with a server traceback), and so that every RPC gets one log line with its name,
status code, duration and the pod/container/image it concerns.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import time
from typing import Any, Callable

import grpc

from pycri import log
from pycri.observe import metrics
from pycri.api import api_pb2
from pycri.errors import CRIError

_log = log.get("rpc")

# Methods the kubelet calls every few seconds, and its probes (ExecSync): logged at debug level when they succeed,
# so a node's log holds its state changes and errors (docs/operations.md, "Logs").
_POLLS = {
    "Version", "Status", "ListPodSandbox", "PodSandboxStatus", "ListContainers", "ContainerStatus",
    "ContainerStats", "ListContainerStats", "PodSandboxStats", "ListPodSandboxStats", "ImageStatus",
    "ListImages", "ImageFsInfo", "ListMetricDescriptors", "ListPodSandboxMetrics", "RuntimeConfig", "ExecSync",
}


def service_handler(service_name: str, servicer: Any, before: Callable[[], None] | None = None
                    ) -> grpc.GenericRpcHandler:
    """A generic handler for `runtime.v1.<service_name>` whose methods call `servicer.<Method>(request, context)`,
    each after `before()` when it is given (errors in it are the call's)."""
    service = api_pb2.DESCRIPTOR.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        request_cls = getattr(api_pb2, method.input_type.name)
        response_cls = getattr(api_pb2, method.output_type.name)
        impl = getattr(servicer, method.name, None)
        kwargs = dict(request_deserializer=request_cls.FromString, response_serializer=_serializer(response_cls))
        if method.client_streaming:
            raise AssertionError(f"{method.full_name}: client streaming is not part of CRI")
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(_streaming(method.name, impl, before),
                                                                         **kwargs)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_unary(method.name, impl, before), **kwargs)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _serializer(response_cls) -> Callable[[Any], bytes]:
    """The response serializer; bytes a handler returns are already the response (pycri/wire.py)."""
    serialize = response_cls.SerializeToString

    def serializer(response) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return serializer


def _unary(name: str, impl: Callable | None, before: Callable[[], None] | None) -> Callable:
    async def handler(request, context):
        started = time.perf_counter()
        if impl is None:
            await _abort_unimplemented(name, request, context, started)
        try:
            if before is not None:
                before()
            response = await impl(request, context)
        except BaseException as exc:  # noqa: BLE001 - every outcome is logged and mapped, then re-raised/aborted
            await _fail(name, request, context, started, exc)
            raise
        _log_ok(name, request, started)
        return response

    return handler


def _streaming(name: str, impl: Callable | None, before: Callable[[], None] | None) -> Callable:
    async def handler(request, context):
        started = time.perf_counter()
        if impl is None:
            await _abort_unimplemented(name, request, context, started)
        try:
            if before is not None:
                before()
            async for item in impl(request, context):
                yield item
        except BaseException as exc:  # noqa: BLE001
            await _fail(name, request, context, started, exc)
            raise
        _log_ok(name, request, started)

    return handler


async def _abort_unimplemented(name, request, context, started) -> None:
    _log.info("rpc", method=name, code="UNIMPLEMENTED", duration_ms=_ms(started), **_ids(request))
    metrics.rpc(name, "UNIMPLEMENTED", time.perf_counter() - started)
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by pycri yet")


async def _fail(name, request, context, started, exc: BaseException) -> None:
    """Log the failure and abort with its status; returns only for exceptions the caller re-raises."""
    ids = _ids(request)
    if isinstance(exc, grpc.aio.AbortError):  # the servicer aborted with its own status
        _log.warning("rpc", method=name, code=str(context.code()), duration_ms=_ms(started), **ids)
        metrics.rpc(name, getattr(context.code(), "name", "UNKNOWN"), time.perf_counter() - started)
        return
    if isinstance(exc, asyncio.CancelledError):  # the client went away or its deadline passed
        _log.info("rpc", method=name, code="CANCELLED", duration_ms=_ms(started), **ids)
        metrics.rpc(name, "CANCELLED", time.perf_counter() - started)
        return
    if isinstance(exc, CRIError):
        _log.warning("rpc", method=name, code=exc.code.name, error=str(exc), duration_ms=_ms(started), **ids)
        metrics.rpc(name, exc.code.name, time.perf_counter() - started)
        await context.abort(exc.code, str(exc))
    disk = _disk_trouble(exc)
    if disk is not None:  # a full disk or a read-only state dir: a status to act on, not an internal error
        code, why = disk
        _log.warning("rpc", method=name, code=code.name, error=f"{why}: {exc}", duration_ms=_ms(started), **ids)
        metrics.rpc(name, code.name, time.perf_counter() - started)
        await context.abort(code, f"{name} failed: {why}: {exc}")
    if isinstance(exc, Exception):
        _log.error("rpc", method=name, code="INTERNAL", error=f"{type(exc).__name__}: {exc}",
                   duration_ms=_ms(started), exc_info=exc, **ids)
        metrics.rpc(name, "INTERNAL", time.perf_counter() - started)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}: {type(exc).__name__}: {exc}")


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_trouble(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """(status, cause) when `exc`, or an error it was raised from, is a full disk (RESOURCE_EXHAUSTED) or a
    read-only file system (UNAVAILABLE): the OSError itself, or SQLite's SQLITE_FULL / SQLITE_READONLY."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return grpc.StatusCode.RESOURCE_EXHAUSTED, "no space left on the device"
        if isinstance(exc, OSError) and exc.errno == errno.EROFS:
            return grpc.StatusCode.UNAVAILABLE, "read-only file system"
        if isinstance(exc, sqlite3.Error):
            text = str(exc).lower()
            if "disk is full" in text or "disk full" in text:
                return grpc.StatusCode.RESOURCE_EXHAUSTED, "no space left for the metadata store"
            if "readonly" in text or "read-only" in text:
                return grpc.StatusCode.UNAVAILABLE, "the metadata store is read-only"
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _log_ok(name: str, request, started: float) -> None:
    if name not in _POLLS:
        _log.info("rpc", method=name, code="OK", duration_ms=_ms(started), **_ids(request))
    elif log.enabled("debug"):
        _log.debug("rpc", method=name, code="OK", duration_ms=_ms(started), **_ids(request))
    metrics.rpc(name, "OK", time.perf_counter() - started)


def _ids(request) -> dict[str, str]:
    """The ids a request concerns, for its log line."""
    out = {}
    fields = request.DESCRIPTOR.fields_by_name
    for key in ("pod_sandbox_id", "container_id"):
        if key in fields and getattr(request, key):
            out[key] = getattr(request, key)
    if "image" in fields and request.image.image:
        out["image"] = request.image.image
    if "config" in fields and request.HasField("config") and "metadata" in request.config.DESCRIPTOR.fields_by_name:
        md = request.config.metadata
        if md.name:
            out["name"] = md.name
        if getattr(md, "namespace", ""):
            out["namespace"] = md.namespace
    return out


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
