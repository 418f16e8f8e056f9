"""AppArmor and SELinux for CRI: what the host has, and the labels a container's OCI spec gets.

Host checks are small functions (apparmor_enabled, apparmor_loaded, selinux_enabled...) so that tests can
replace them; everything else is policy on top of them:

AppArmor (`apparmor` SecurityProfile, or the deprecated `apparmor_profile` string: "runtime/default",
"unconfined", "localhost/<name>", ""):
- host without AppArmor: RuntimeDefault, Unconfined and unset pass (no profile); a Localhost profile is an
  INVALID_ARGUMENT ("apparmor is not enabled on this host"): the container would run without the confinement asked
  for. (containerd refuses RuntimeDefault there too; CRI-O lets it pass, and so do we: the kubelet asks for it by
  default.)
- host with AppArmor: unset and RuntimeDefault give `pycri-default` (our version of containerd's
  cri-containerd.apparmor.d / docker-default, loaded with apparmor_parser the first time it is needed), except for
  privileged containers, which stay unconfined; Unconfined gives none; Localhost gives the named profile, which
  must be loaded (INVALID_ARGUMENT otherwise). The result is process.apparmorProfile.

SELinux (`selinux_options`: user, role, type, level):
- host without SELinux: the options are ignored, as containerd and CRI-O do (the kubelet sends them for any pod
  that sets seLinuxOptions, and such pods run on AppArmor and plain hosts).
- host with SELinux, not privileged, and some option set: process.selinuxLabel `user:role:type:level` and
  linux.mountLabel `user:object_r:<file type>:level`, the missing parts from the policy's lxc_contexts (else
  system_u, system_r, container_t, container_file_t, s0); a container without a level takes its pod's. No
  per-pod MCS categories are picked for pods that set none (containerd does that with enable_selinux).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading

from pycri.api import api_pb2 as cri
from pycri.errors import FailedPrecondition, InvalidArgument
from pycri.oci import profiles
from pycri.oci.profiles import LOCALHOST_PREFIX, RUNTIME_DEFAULT, UNCONFINED

DEFAULT_APPARMOR_PROFILE = "pycri-default"

APPARMOR_ENABLED = "/sys/module/apparmor/parameters/enabled"
APPARMOR_PROFILES = "/sys/kernel/security/apparmor/profiles"
SELINUX_MOUNTS = ("/sys/fs/selinux", "/selinux")


# ---- host checks (replace these in tests) ----

def apparmor_enabled() -> bool:
    """AppArmor is the (or a) running LSM: the module parameter says Y."""
    try:
        with open(APPARMOR_ENABLED) as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def apparmor_loaded() -> set[str] | None:
    """Names of the loaded AppArmor profiles, or None when the list cannot be read."""
    try:
        with open(APPARMOR_PROFILES) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    return {line.rsplit(" (", 1)[0] for line in lines if line.strip()}


def selinux_enabled(mounts: tuple[str, ...] = SELINUX_MOUNTS, attr: str = "/proc/self/attr/current") -> bool:
    """selinuxfs is mounted (it has an `enforce` file) and this process has a label other than "kernel", the
    one of every process while no policy is loaded (libselinux's is_selinux_enabled tells that case apart the
    same way): a kernel with SELinux built in and no policy refuses `context=` mount options."""
    for path in mounts:
        if os.path.exists(os.path.join(path, "enforce")):
            try:
                with open(attr) as f:
                    label = f.read().strip("\0\n ")
            except OSError:
                return False
            return label not in ("", "kernel")
    return False


def selinux_lxc_contexts() -> dict[str, str]:
    """`process`/`file` defaults of the loaded policy's lxc_contexts (empty when absent)."""
    try:
        with open("/etc/selinux/config") as f:
            policy = next((line.split("=", 1)[1].strip() for line in f if line.startswith("SELINUXTYPE=")), "")
        with open(f"/etc/selinux/{policy or 'targeted'}/contexts/lxc_contexts") as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    return out


# ---- AppArmor ----

def requested_apparmor(sc) -> tuple[str, str]:
    """What a security context asks for: ("" unset | "runtime/default" | "unconfined" | "localhost", name)."""
    if sc is None:
        return "", ""
    if sc.HasField("apparmor"):
        return profiles.requested(sc.apparmor, "apparmor", "name")
    legacy = getattr(sc, "apparmor_profile", "")  # containers only; sandboxes have no such field
    if legacy == "":
        return "", ""
    if legacy in (RUNTIME_DEFAULT, UNCONFINED):
        return legacy, ""
    if legacy.startswith(LOCALHOST_PREFIX) and len(legacy) > len(LOCALHOST_PREFIX):
        return "localhost", legacy[len(LOCALHOST_PREFIX):]
    raise InvalidArgument(f"apparmor_profile {legacy!r} is not runtime/default, unconfined or localhost/<name>")


def apparmor_profile(sc, *, privileged: bool = False) -> str | None:
    """The process.apparmorProfile for a security context, or None (see the module doc)."""
    kind, name = requested_apparmor(sc)
    if not apparmor_enabled():
        if kind == "localhost":
            raise InvalidArgument(f"apparmor profile {name!r} requested, but apparmor is not enabled on this host")
        return None
    if kind == UNCONFINED or (kind in ("", RUNTIME_DEFAULT) and privileged):
        return None
    if kind == "localhost":
        loaded = apparmor_loaded()
        if loaded is not None and name not in loaded:
            raise InvalidArgument(f"apparmor profile {name!r} is not loaded on this host")
        return name
    ensure_default_apparmor()
    return DEFAULT_APPARMOR_PROFILE


_default_lock = threading.Lock()
_default_loaded = False

# Our RuntimeDefault profile: the rules of containerd's/moby's default AppArmor template.
_DEFAULT_TEMPLATE = """\
{imports}
profile {name} flags=(attach_disconnected,mediate_deleted) {{
{inner}
  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (receive) peer={daemon},
  signal (send,receive) peer={name},

  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{[^1-9/],[^1-9/][^0-9/],[^1-9s/][^0-9y/][^0-9s/],[^1-9/][^0-9/][^0-9/][^0-9/]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,

  deny mount,

  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,

  ptrace (trace,tracedby,read,readby) peer={name},
}}
"""


def default_apparmor_text(name: str = DEFAULT_APPARMOR_PROFILE, apparmor_d: str = "/etc/apparmor.d") -> str:
    have = lambda rel: os.path.exists(os.path.join(apparmor_d, rel))  # noqa: E731
    imports = []
    if have("abi/3.0"):
        imports.append("abi <abi/3.0>,")
    imports.append("#include <tunables/global>" if have("tunables/global") else "@{PROC}=/proc/")
    inner = "  #include <abstractions/base>" if have("abstractions/base") else ""
    try:
        with open("/proc/self/attr/current") as f:
            daemon = f.read().strip("\0\n ").split(" (")[0] or UNCONFINED
    except OSError:
        daemon = UNCONFINED
    return _DEFAULT_TEMPLATE.format(imports="\n".join(imports), inner=inner, name=name, daemon=daemon)


def ensure_default_apparmor() -> None:
    """Load pycri-default unless it is loaded (apparmor_parser, once per daemon)."""
    global _default_loaded
    with _default_lock:
        if _default_loaded:
            return
        loaded = apparmor_loaded()
        if loaded is not None and DEFAULT_APPARMOR_PROFILE in loaded:
            _default_loaded = True
            return
        parser = shutil.which("apparmor_parser")
        if parser is None:
            raise FailedPrecondition(f"apparmor is enabled but its default profile {DEFAULT_APPARMOR_PROFILE!r} "
                                     "is not loaded and apparmor_parser is not installed")
        with tempfile.NamedTemporaryFile("w", prefix="pycri-apparmor-", suffix=".profile") as f:
            f.write(default_apparmor_text())
            f.flush()
            proc = subprocess.run([parser, "-Kr", f.name], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise FailedPrecondition(f"loading apparmor profile {DEFAULT_APPARMOR_PROFILE!r} failed: "
                                     f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        _default_loaded = True


# ---- SELinux ----

_LABEL_PART = re.compile(r"^[A-Za-z0-9_.-]*$")
_LEVEL = re.compile(r"^[A-Za-z0-9_.,:-]*$")


def _options(sc) -> cri.SELinuxOption | None:
    if sc is None or not sc.HasField("selinux_options"):
        return None
    opts = sc.selinux_options
    for what in ("user", "role", "type"):
        if not _LABEL_PART.match(getattr(opts, what)):
            raise InvalidArgument(f"selinux_options.{what} {getattr(opts, what)!r} is not a valid label part")
    if not _LEVEL.match(opts.level):
        raise InvalidArgument(f"selinux_options.level {opts.level!r} is not a valid MLS level")
    return opts if any((opts.user, opts.role, opts.type, opts.level)) else None


def selinux_labels(sc, *, privileged: bool = False, pod_sc=None) -> tuple[str, str] | None:
    """(process label, mount label) for a security context (a container's, with its pod's for the level), or
    None for no labels (see the module doc)."""
    opts = _options(sc)
    pod = _options(pod_sc) if pod_sc is not None else None
    if (opts is None and pod is None) or privileged or not selinux_enabled():
        return None
    ctx = selinux_lxc_contexts()
    proc_default = (ctx.get("process") or "system_u:system_r:container_t:s0").split(":", 3)
    file_default = (ctx.get("file") or "system_u:object_r:container_file_t:s0").split(":", 3)
    while len(proc_default) < 4:
        proc_default.append("s0")
    while len(file_default) < 4:
        file_default.append("s0")

    def pick(field: str, default: str) -> str:
        for o in (opts, pod):
            if o is not None and getattr(o, field):
                return getattr(o, field)
        return default

    user = pick("user", proc_default[0])
    level = pick("level", proc_default[3])
    process = f"{user}:{pick('role', proc_default[1])}:{pick('type', proc_default[2])}:{level}"
    mount = f"{user}:{file_default[1]}:{file_default[2]}:{level}"
    return process, mount


# ---- both, into a spec ----

def apply(spec: dict, sc, *, privileged: bool = False, pod_sc=None) -> None:
    """Set process.apparmorProfile, process.selinuxLabel and linux.mountLabel of an OCI spec as the security
    context asks (nothing when it asks for nothing the host has)."""
    profile = apparmor_profile(sc, privileged=privileged)
    if profile:
        spec["process"]["apparmorProfile"] = profile
    labels = selinux_labels(sc, privileged=privileged, pod_sc=pod_sc)
    if labels:
        spec["process"]["selinuxLabel"], spec["linux"]["mountLabel"] = labels
