"""Which default network config pycri may rewrite for a pod CIDR (pycri/network/defaultnet.py), on files alone."""

from __future__ import annotations

import json

import pytest

from pycri.network.defaultnet import (DEFAULT_CONFLIST_NAME, NOT_OURS, REWRITTEN, UNCHANGED, WRITTEN,
                                      default_conflist, subnets_of, sync_default_conflist, write_default_conflist)

IPAM = "/var/lib/pycri/cni/networks"
OLD, NEW = ["10.88.0.0/16"], ["10.244.3.0/24"]


def _ranges(path) -> list:
    return json.loads(path.read_text())["plugins"][0]["ipam"]["ranges"]


def test_subnets_of_trims_and_clears_host_bits():
    assert subnets_of(" 10.244.3.7/24 , fd00:1::5/64") == ["10.244.3.0/24", "fd00:1::/64"]
    for bad in ("10.244.3.0/33", "10.244.3.0/24,", "nonsense", "10.244.3.0/24,10.244.4.0/24"):
        with pytest.raises(ValueError):
            subnets_of(bad)


def test_written_then_rewritten_then_unchanged(tmp_path):
    assert sync_default_conflist(str(tmp_path), OLD, IPAM, OLD)[0] == WRITTEN
    outcome, path = sync_default_conflist(str(tmp_path), NEW, IPAM, OLD)
    assert (outcome, path.name, _ranges(path)) == (REWRITTEN, DEFAULT_CONFLIST_NAME, [[{"subnet": NEW[0]}]])
    assert sync_default_conflist(str(tmp_path), NEW, IPAM, NEW)[0] == UNCHANGED
    # written but not recorded (the daemon stopped in between): the file is already what pycri wants
    assert sync_default_conflist(str(tmp_path), NEW, IPAM, OLD)[0] == UNCHANGED


def test_a_default_written_by_an_older_pycri_is_ours_only_without_a_record(tmp_path):
    path = write_default_conflist(str(tmp_path), OLD, IPAM)
    conf = json.loads(path.read_text())
    del conf["plugins"][0]["forceAddress"]  # as pycri wrote it before it set forceAddress
    path.write_text(json.dumps(conf))
    assert sync_default_conflist(str(tmp_path), NEW, IPAM, OLD)[0] == NOT_OURS  # (recorded: an admin's edit)
    assert sync_default_conflist(str(tmp_path), NEW, IPAM, OLD, legacy=True)[0] == REWRITTEN
    assert json.loads(path.read_text()) == default_conflist(NEW, IPAM)


def test_other_files_and_edits_are_not_ours(tmp_path):
    path = write_default_conflist(str(tmp_path), OLD, IPAM)
    conf = json.loads(path.read_text())
    conf["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.99.0.0/16"}]]
    path.write_text(json.dumps(conf))
    assert sync_default_conflist(str(tmp_path), NEW, IPAM, OLD, legacy=True) == (NOT_OURS, path)
    path.unlink()
    other = tmp_path / "50-other.conflist"
    other.write_text(json.dumps({"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "bridge"}]}))
    assert sync_default_conflist(str(tmp_path), NEW, IPAM, OLD) == (NOT_OURS, other)
    assert not path.exists()


def test_dual_stack_ranges_and_routes():
    conf = default_conflist("10.244.3.0/24,fd00:1::/64", IPAM)
    ipam = conf["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:1::/64"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    assert default_conflist(["10.244.3.0/24"], IPAM)["plugins"][0]["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}]
