"""API keys: either header, the scheme in any case, every configured key, nothing else."""

from __future__ import annotations

import pytest

from shipyard_serving.auth import KeyCheck

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("keys", [["k-1"], ["other", "k-1"]])
def test_a_configured_key_in_either_header_is_allowed(keys: list[str]) -> None:
    check = KeyCheck(keys)
    for headers in (
        {b"authorization": b"Bearer k-1"},
        {b"authorization": b"bearer k-1"},
        {b"authorization": b"BEARER  k-1 "},
        {b"x-api-key": b"k-1"},
    ):
        assert check.allows(headers), headers


@pytest.mark.parametrize("keys", [["k-1"], ["other", "k-1"]])
def test_anything_else_is_refused(keys: list[str]) -> None:
    check = KeyCheck(keys)
    for headers in (
        {},
        {b"authorization": b"Bearer k-2"},
        {b"authorization": b"Bearer k-1x"},
        {b"authorization": b"Basic k-1"},
        {b"authorization": b"k-1"},
        {b"authorization": b"Bearer "},
        {b"x-api-key": b""},
        {b"x-api-key": b"wrong", b"authorization": b"Bearer k-1"},  # X-API-Key is the one read
    ):
        assert not check.allows(headers), headers
