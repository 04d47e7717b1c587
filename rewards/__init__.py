"""Built-in verifiers. Importing this package registers them in :data:`rlvr.rewards.VERIFIERS`.

* ``"math"`` (:mod:`rewards.math`): final-answer equivalence via math-verify.

:func:`rlvr.rewards.resolve_verifier` imports this package lazily, the first time a bare name is resolved.
"""

from rewards import math

__all__ = ["math"]
