"""A CRI SecurityProfile (seccomp's or AppArmor's) read once for both: which kind, and the Localhost reference.

Both fields ask the same way: RuntimeDefault, Unconfined, or Localhost with `localhost_ref` (a seccomp profile's
path, an AppArmor profile's name; an optional `localhost/` prefix is dropped, as the kubelet's older form had
it). What each kind then means is the caller's (pycri/oci/seccomp.py, pycri/oci/lsm.py), and so are the
deprecated string fields, which differ between the two.
"""

from __future__ import annotations

from pycri.api import api_pb2 as cri
from pycri.errors import InvalidArgument

RUNTIME_DEFAULT = "runtime/default"
UNCONFINED = "unconfined"
LOCALHOST = "localhost"
LOCALHOST_PREFIX = "localhost/"


def requested(sp: cri.SecurityProfile, what: str, ref_is: str) -> tuple[str, str]:
    """(UNCONFINED | RUNTIME_DEFAULT | LOCALHOST, reference) of a SecurityProfile; `what` ("seccomp", "apparmor")
    and `ref_is` (what the reference names) go into the INVALID_ARGUMENT messages."""
    if sp.profile_type != cri.SecurityProfile.Localhost and sp.localhost_ref:
        raise InvalidArgument(f"{what}: localhost_ref must only be set when profile_type is Localhost")
    if sp.profile_type == cri.SecurityProfile.Unconfined:
        return UNCONFINED, ""
    if sp.profile_type == cri.SecurityProfile.RuntimeDefault:
        return RUNTIME_DEFAULT, ""
    if sp.profile_type == cri.SecurityProfile.Localhost:
        ref = sp.localhost_ref.removeprefix(LOCALHOST_PREFIX)
        if not ref:
            raise InvalidArgument(f"{what}: profile_type Localhost needs localhost_ref (the profile's {ref_is})")
        return LOCALHOST, ref
    raise InvalidArgument(f"{what}: unknown profile_type {sp.profile_type}")
