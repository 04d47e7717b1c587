"""A random :class:`~rlvr.types.RolloutBatch` for the update tests (policy and preference alike)."""

from __future__ import annotations

import torch

from rlvr.types import RolloutBatch


def random_batch(
    n: int = 8, p: int = 5, t: int = 6, vocab: int = 60, seed: int = 0, group: int = 1
) -> RolloutBatch:
    """``n`` rows of random tokens, some prompts left-padded and responses of random lengths, with random
    advantages and reference log-probs; with ``group`` > 1, each run of ``group`` rows shares its prompt
    (a GRPO group, or a preference pair's two answers)."""
    g = torch.Generator().manual_seed(seed)
    prompt_mask = torch.ones(n, p, dtype=torch.long)
    prompt_mask[(torch.arange(n) // group) % 2 == 0, :2] = 0  # some prompts left-padded
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    response_mask = (torch.arange(t)[None, :] < lengths[:, None]).float()  # [N, T]
    prompts = torch.randint(3, vocab, (n // group, p), generator=g).repeat_interleave(group, 0)  # [N, P]
    return RolloutBatch(
        prompt_ids=prompts * prompt_mask,
        prompt_mask=prompt_mask,
        response_ids=torch.randint(3, vocab, (n, t), generator=g),
        response_mask=response_mask,
        engine_logprobs=torch.zeros(n, t),
        sequence_rewards=torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]).repeat(n // 8 + 1)[:n],
        group_index=torch.arange(n) // 4,
        truncated=torch.zeros(n, dtype=torch.bool),
        advantages=torch.randn(n, 1, generator=g).expand(n, t) * response_mask,
        ref_logprobs=-torch.rand(n, t, generator=g) * 3 * response_mask,
    )
