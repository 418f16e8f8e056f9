"""The pycri-init spares of one monitor (initproc.Spare, made by an initproc.SpareFactory): after a fast-init start,
one is kept ready for the pod's next container, for SPARE_KEEP_S (docs/runtime.md, "The spare")."""
from __future__ import annotations

import os
import time

from runtime.launch import initproc

# How long a spare pycri-init is kept after a container's create: long enough for the rest of a pod's containers
# (the kubelet creates them one after another), short enough that an idle pod holds none.
SPARE_KEEP_S = 5.0
# When a start's spare is made: at the started container's exit, or this long after its start, whichever comes
# first, so that its clone does not compete with the container's exec; a create that comes sooner has the spare
# made first.
SPARE_AFTER_START_S = 0.002


class InitSpares:
    def __init__(self, warn):
        self.warn = warn  # warn(error): a spare could not be made
        self.spare: initproc.Spare | None = None  # see keep
        self.factory: initproc.SpareFactory | None = None  # makes the spares, while there are any
        self.until = 0.0
        self.due: tuple[float, bool, str] | None = None  # (when, new pid ns, container): see after_start

    def take(self) -> initproc.Spare | None:
        """The spare, for a create: it is the caller's from now."""
        spare, self.spare = self.spare, None
        return spare

    def after_start(self, new_pidns: bool, cid: str) -> None:
        """A fast-init container started: a spare like it is due once its start-up is over."""
        self.due = (time.monotonic() + SPARE_AFTER_START_S, new_pidns, cid)

    def due_for(self, cid: str) -> bool:
        return self.due is not None and self.due[2] == cid

    def deadline(self) -> float | None:
        """When tick() has something to do, for the loop's timeout."""
        when = []
        if self.spare is not None or self.factory is not None:
            when.append(self.until)
        if self.due is not None:
            when.append(self.due[0])
        return min(when) if when else None

    def tick(self) -> None:
        """The due spare made; the spare and factory dropped once kept long enough."""
        if self.due is not None and time.monotonic() >= self.due[0]:
            self.make_due()
        if (self.spare is not None or self.factory is not None) and time.monotonic() >= self.until:
            self.drop()
            self.drop_factory()

    def make_due(self) -> None:
        if self.due is not None:
            new_pidns = self.due[1]
            self.due = None
            self.keep(new_pidns)

    def keep(self, new_pidns: bool) -> None:
        """After a fast-init start (answered): have a pycri-init ready for the pod's next container, in a
        new pid namespace if this one had one, for SPARE_KEEP_S."""
        self.until = time.monotonic() + SPARE_KEEP_S
        if self.spare is not None and self.spare.new_pidns == new_pidns:
            return
        self.drop()
        try:
            if self.factory is None:
                self.factory = initproc.SpareFactory()
            self.spare = initproc.Spare(new_pidns, self.factory)
        except OSError as exc:  # (a factory gone: the next start makes another)
            self.drop_factory()
            self.warn(str(exc))

    def drop(self) -> None:
        """Release the spare: it exits on EOF and is reaped as any child (waited for here at shutdown)."""
        if self.spare is not None:
            self.spare.close()
            self.spare = None

    def drop_factory(self) -> None:
        """Release the spare factory: it exits on EOF and is reaped as any child (waited for at shutdown)."""
        if self.factory is not None:
            self.factory.close()
            self.factory = None

    def end(self) -> None:
        """Release the spare and its factory and wait for their exits (shutdown)."""
        self.due = None
        pids = []
        if self.spare is not None:
            try:
                pids.append(self.spare.pid)
            except OSError:  # never made
                pass
            self.drop()
        if self.factory is not None:
            pids.append(self.factory.pid)
            self.drop_factory()
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:  # reaped already
                pass
