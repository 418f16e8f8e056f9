"""Errors that carry a gRPC status code; the RPC layer turns them into that status and a log line."""

from __future__ import annotations

import grpc


class CRIError(Exception):
    code = grpc.StatusCode.INTERNAL


class TeardownError(CRIError):
    """Some step of undoing a sandbox or a container, or of removing an image's files, failed (all were tried);
    the record stays, where there is one, so that a retry finishes it."""


class InvalidArgument(CRIError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CRIError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CRIError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CRIError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(CRIError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(CRIError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(CRIError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(CRIError):
    code = grpc.StatusCode.UNIMPLEMENTED
