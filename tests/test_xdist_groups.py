"""``make test`` runs pytest-xdist with ``--dist loadgroup``: the tests of one ``xdist_group``
(for example the owner-encoder modules, which share trained caches) must run on one worker,
or two workers train and write the same caches at once. pytest-xdist marks a grouped test by
suffixing its node id with ``@GROUP``; pytest 9.2 ignores that suffix (its node ids became
structured), which silently turns loadgroup into plain load balancing. This test fails
whenever that happens again.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.xdist_group("xdist-groups-check")


def test_grouped_tests_carry_their_group_under_loadgroup(request):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not running under pytest-xdist --dist loadgroup")
    assert request.node.nodeid.endswith("@xdist-groups-check"), (
        f"node id {request.node.nodeid!r} has no @group suffix: this pytest / pytest-xdist pair does not "
        "honour xdist_group (pin the versions in constraints.txt that do)")
