#!/usr/bin/env bash
# Make the pause image available without a registry: build our static pause image (hack/build_test_images.py)
# and import it into pycri's store under the sandbox image name, so `make run` works on an offline node.
# SANDBOX_IMAGE must match the config's sandbox_image (default registry.k8s.io/pause:3.10).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python hack/build_test_images.py --quiet
tar --sort=name -C .cache/test-images/pause -cf .cache/pause-oci.tar .
.venv/bin/pycri ${PYCRI_CONFIG:+--config "$PYCRI_CONFIG"} images import .cache/pause-oci.tar \
    --name "${SANDBOX_IMAGE:-registry.k8s.io/pause:3.10}"
