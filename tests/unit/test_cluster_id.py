"""The KRaft cluster id of the local broker never reads as a command-line option."""

from __future__ import annotations

import base64

from bridge.dev.stack import new_cluster_id


def test_an_id_with_a_leading_dash_is_drawn_again():
    draws = iter([b"\xf8" + bytes(15), b"\x01" * 16])
    assert base64.urlsafe_b64encode(b"\xf8" + bytes(15)).startswith(b"-")
    assert new_cluster_id(lambda: next(draws)) == "AQEBAQEBAQEBAQEBAQEBAQ"


def test_random_ids_are_22_characters_of_base64url_without_a_leading_dash():
    ids = {new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
