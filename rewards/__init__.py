"""Built-in verifiers. Importing this package registers them in :data:`rlvr.rewards.VERIFIERS`.

* ``"math"`` (:mod:`rewards.math`): final-answer equivalence via math-verify.
* ``"code"`` (:mod:`rewards.code`): run the program against the example's tests in :mod:`rlvr.sandbox`.
* ``"format"`` (:mod:`rewards.format`): think/answer tag template (or a regex) compliance.
* ``"length"`` (:mod:`rewards.length`): DAPO soft overlong penalty, or DLER truncation-gated correctness.
* ``"repetition"`` (:mod:`rewards.repetition`): n-gram repetition penalty.

:func:`rlvr.rewards.resolve_verifier` imports this package lazily, the first time a bare name is resolved.
"""

from rewards import code, format, length, math, repetition

__all__ = ["code", "format", "length", "math", "repetition"]
