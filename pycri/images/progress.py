"""Pulls in flight and how far each has got: what `pycri images pulls` and the pull metrics show.

The manager registers a pull when it starts and drops it when it ends; per layer it records the phase
(waiting for a download slot, downloading, unpacking, done). Byte counts are not copied here: while a layer
downloads, its figures are read from the content store's Transfer for that digest (shared by every pull that
wants the blob), so a snapshot costs nothing until someone asks.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .content import ContentStore

# Layer phases
WAITING, DOWNLOADING, UNPACKING, DONE = "waiting", "downloading", "unpacking", "done"


@dataclass
class LayerProgress:
    digest: str
    size: int
    phase: str = WAITING


@dataclass
class PullProgress:
    id: int
    image: str
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    phase: str = "resolving"  # resolving (manifests, config) -> pulling (layers)
    layers: list[LayerProgress] = field(default_factory=list)

    def set_layers(self, layers: list[dict]) -> None:
        self.layers = [LayerProgress(d["digest"], int(d["size"])) for d in layers]
        self.phase = "pulling"

    def layer(self, index: int, phase: str) -> None:
        self.layers[index].phase = phase


class PullTracker:
    def __init__(self, content: "ContentStore") -> None:
        self.content = content
        self._pulls: dict[int, PullProgress] = {}
        self._ids = itertools.count(1)

    def start(self, image: str) -> PullProgress:
        pull = PullProgress(next(self._ids), image)
        self._pulls[pull.id] = pull
        return pull

    def end(self, pull: PullProgress) -> None:
        self._pulls.pop(pull.id, None)

    def __len__(self) -> int:
        return len(self._pulls)

    def snapshot(self) -> list[dict]:
        """Every pull in flight as plain data (JSON-ready), oldest first."""
        now = time.monotonic()
        out = []
        for pull in self._pulls.values():
            layers = []
            for i, layer in enumerate(pull.layers):
                done, rate, idle = self._layer_bytes(layer, now)
                layers.append({"index": i, "digest": layer.digest, "phase": layer.phase, "done_bytes": done,
                               "total_bytes": layer.size, "rate_bytes_per_second": round(rate, 1),
                               "idle_seconds": round(idle, 1)})
            out.append({
                "id": pull.id, "image": pull.image, "phase": pull.phase, "started_at": pull.started_at,
                "elapsed_seconds": round(now - pull.started, 3),
                "done_bytes": sum(x["done_bytes"] for x in layers),
                "total_bytes": sum(x["total_bytes"] for x in layers),
                "rate_bytes_per_second": round(sum(x["rate_bytes_per_second"] for x in layers), 1),
                "layers": layers,
            })
        return out

    def _layer_bytes(self, layer: LayerProgress, now: float) -> tuple[int, float, float]:
        """(bytes present, current rate, seconds since data last arrived) for one layer."""
        if layer.phase in (UNPACKING, DONE):
            return layer.size, 0.0, 0.0
        transfer = self.content.transfers.get(layer.digest)
        if transfer is None:
            return 0, 0.0, 0.0
        return min(transfer.done, layer.size), transfer.rate(now), now - transfer.last_data
