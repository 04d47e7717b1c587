"""Trainer pieces, one concern per module; the step that uses them is :func:`rlvr.train.run_step`.

* ``setup``: accelerator, DeepSpeed config, policy / reference / optimizer construction;
* ``collect``: prompts -> scored groups of completions (dynamic sampling, greedy baselines);
* ``batch``: groups -> a padded :class:`~rlvr.types.RolloutBatch`;
* ``logprobs``: per-token log-probs and entropies; the pre-update pass that fills requested batch fields;
* ``components``: KL penalty, entropy bonus, critic, token weighting (state and hooks across steps);
* ``critic``: the value model next to the policy;
* ``update``: mini-batches, micro-batches, loss, backward, optimizer step;
* ``distributed``: every cross-process reduction;
* ``weights``: gathering weights for the rollout engine; ``checkpoint``: save, resume, export;
* ``evaluation``: benchmarks during training; ``metrics``: metrics.jsonl, tensorboard, the console line.
"""
