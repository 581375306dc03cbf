"""The fuzz tests' seed: one per run, printed in pytest's header, so a failure reproduces with
`SHIPYARD_FUZZ_SEED=<seed> make test`. `SHIPYARD_FUZZ_EXAMPLES` sets how many examples each
fuzz test draws (`make test-fast` draws fewer)."""

from __future__ import annotations

import os
import random

SEED = int(os.environ.get("SHIPYARD_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
EXAMPLES = int(os.environ.get("SHIPYARD_FUZZ_EXAMPLES", "150"))
