"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time."""

from __future__ import annotations

import hmac


class KeyCheck:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]
        # With one key, the header most clients send, whole: checked with one comparison.
        self._bearer = b"Bearer " + self._keys[0] if len(self._keys) == 1 else None

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, headers: dict[bytes, bytes]) -> bool:
        """True if a presented key matches one of the configured keys.

        Every configured key is compared, whatever matched, so timing reveals neither which
        key nor how much of it matched.
        """
        presented = headers.get(b"x-api-key")
        if presented is None:
            authorization = headers.get(b"authorization")
            if authorization is None:
                return False
            if self._bearer is not None and hmac.compare_digest(authorization, self._bearer):
                return True
            scheme, _, value = authorization.partition(b" ")
            if scheme.lower() != b"bearer":
                return False
            presented = value.strip()
        if not presented:
            return False
        if len(self._keys) == 1:  # the usual case, without the loop
            return hmac.compare_digest(presented, self._keys[0])
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched
