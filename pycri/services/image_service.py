"""runtime.v1.ImageService. Methods not defined here answer UNIMPLEMENTED (see pycri.rpc)."""

from __future__ import annotations


class ImageService:
    def __init__(self, manager=None) -> None:
        self.manager = manager
