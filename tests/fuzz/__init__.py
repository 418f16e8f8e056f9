"""Fuzz tests (hypothesis): hostile layer tars, image references, manifests, config, SPDY/WebSocket input and random
CRI requests. The suite runs a short deterministic pass (profile "ci"); HYPOTHESIS_PROFILE=long or
`hack/fuzz.py --long` runs the long, randomised one (docs/reliability.md)."""
