"""What scores: the built-in verifiers and reward-model ensemble objectives, written against the public API
of :mod:`rlvr.scoring` exactly like a user's own. Importing this package registers them in
:data:`rlvr.scoring.VERIFIERS` and :data:`rlvr.scoring.ENSEMBLE_COMBINES`.

* ``"math"`` (:mod:`rewards.math`): final-answer equivalence via math-verify.
* ``"code"`` (:mod:`rewards.code`): run the program against the example's tests in
  :mod:`rlvr.scoring.sandbox` (the in-sandbox test harness is :mod:`rewards.code_harness`).
* ``"format"`` (:mod:`rewards.format`): think/answer tag template (or a regex) compliance.
* ``"length"`` (:mod:`rewards.length`): DAPO soft overlong penalty, or DLER truncation-gated correctness.
* ``"repetition"`` (:mod:`rewards.repetition`): n-gram repetition penalty.
* ``"reasoning_gym"`` (:mod:`rewards.reasoning_gym`): a reasoning-gym task's own answer check.
* ensemble objectives ``"mean"``, ``"min"``/``"wco"``, ``"uwo"`` (:mod:`rewards.reward_models`).

The registries of :mod:`rlvr.scoring` import this package lazily, the first time a name is looked up.
"""

from rewards import code, format, length, math, reasoning_gym, repetition, reward_models

__all__ = ["code", "format", "length", "math", "reasoning_gym", "repetition", "reward_models"]
