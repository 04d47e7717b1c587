"""Evaluation during training: held-out benchmarks every ``eval.every`` steps, logged with the step.

It reuses the rollout engine, which already holds the weights of the step just taken (no second model,
no engine start), and the evaluation code of ``rlvr eval`` (:func:`rlvr.eval.runner.evaluate`): the same
problems and sampling seeds at every evaluation, so the numbers are comparable across steps. Only the
main process evaluates (each call covers every problem); the others wait at a barrier, except that
when its engine is shared by a group of processes (:mod:`rlvr.rollout.group`) its group-mates run the
engine with it.
"""

from __future__ import annotations

from rlvr.config import Recipe


class PeriodicEvaluator:
    """Holds the loaded benchmark specs and one verifier scorer per benchmark for the whole run."""

    def __init__(self, recipe: Recipe, engine, tokenizer, accelerator, context_len: int) -> None:
        from rlvr.eval.benchmarks import load_spec
        from rlvr.eval.runner import make_scorer

        self.cfg = recipe.eval
        self.seed = recipe.run.seed
        self.engine, self.tokenizer, self.accelerator = engine, tokenizer, accelerator
        self.context_len = context_len
        self.specs = [load_spec(name) for name in self.cfg.benchmarks]
        self.scorers = [make_scorer(spec, num_workers=1) for spec in self.specs] if self._main else []

    @property
    def _main(self) -> bool:
        return self.accelerator.is_main_process

    def due(self, step: int, last_step: int) -> bool:
        every = self.cfg.every
        return every > 0 and (step % every == 0 or step == last_step)

    def run(self) -> dict[str, float]:
        """``eval/<benchmark>/<metric>`` on the main process, ``{}`` elsewhere."""
        from rlvr.eval.runner import evaluate
        from rlvr.rollout.group import follow, leading

        metrics: dict[str, float] = {}
        if not self._main:  # the main process's group-mates, when it shares its engine, run its calls
            follow(self.engine, leader=0)
            self.accelerator.wait_for_everyone()
            return metrics
        with leading(self.engine):
            for spec, scorer in zip(self.specs, self.scorers, strict=True):
                metrics.update(
                    evaluate(
                        self.engine,
                        self.tokenizer,
                        spec,
                        limit=self.cfg.limit,
                        n=self.cfg.n,
                        seed=self.seed,
                        ks=self.cfg.ks,
                        temperature=self.cfg.temperature,
                        max_tokens=self.cfg.max_tokens,
                        context_len=self.context_len,
                        scorer=scorer,
                    )
                )
        self.accelerator.wait_for_everyone()
        return metrics

    def close(self) -> None:
        for scorer in self.scorers:
            scorer.close()
