"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time."""

from __future__ import annotations

import hmac


class KeyCheck:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, headers: dict[bytes, bytes]) -> bool:
        """True if a presented key matches one of the configured keys.

        Every configured key is compared, whatever matched, so timing reveals neither which
        key nor how much of it matched.
        """
        presented = headers.get(b"x-api-key")
        authorization = headers.get(b"authorization")
        if presented is None and authorization is not None:
            scheme, _, value = authorization.partition(b" ")
            if scheme.lower() == b"bearer":
                presented = value.strip()
        if not presented:
            return False
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched
