"""metav1.Status JSON for the remotecommand error stream (v4 and later), as kubelet writes it."""

from __future__ import annotations

import json


def success() -> bytes:
    return json.dumps({"metadata": {}, "status": "Success"}, separators=(",", ":")).encode()


def _go_list(cmd: list[str]) -> str:
    return "[" + " ".join(cmd) + "]"


def _exit_message(cmd: list[str], code: int) -> str:
    return f"command terminated with non-zero exit code: error executing command {_go_list(cmd)}, exit code {code}"


def exit_code(cmd: list[str], code: int) -> bytes:
    return json.dumps({
        "metadata": {},
        "status": "Failure",
        "message": _exit_message(cmd, code),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }, separators=(",", ":")).encode()


def internal_error(message: str) -> bytes:
    return json.dumps({
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }, separators=(",", ":")).encode()


def legacy_text(code: int | None, error: str | None, cmd: list[str]) -> bytes:
    """v1-v3 protocols carry a plain error string (empty on success)."""
    if error:
        return error.encode()
    if code:
        return _exit_message(cmd, code).encode()
    return b""
