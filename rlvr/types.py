"""The batch type that travels from rollout to update.

Shape letters, used in ``# [..]`` comments throughout the package:

- ``N``: sequences on this process in this step (prompts x G samples per prompt)
- ``P``: longest prompt (prompts are left-padded to P)
- ``T``: longest response (responses are right-padded to T)
- ``V``: vocabulary size
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class RolloutBatch:
    """Samples of one RL step on this process, as tensors, plus what later stages add to them."""

    prompt_ids: torch.Tensor  # [N, P] long, left-padded
    prompt_mask: torch.Tensor  # [N, P] long
    response_ids: torch.Tensor  # [N, T] long, right-padded
    response_mask: torch.Tensor  # [N, T] float: 1 on generated tokens
    engine_logprobs: torch.Tensor  # [N, T] float: sampled-token logprobs reported by the engine
    sequence_rewards: torch.Tensor  # [N] float
    group_index: torch.Tensor  # [N] long: samples of the same prompt share an index
    truncated: torch.Tensor  # [N] bool: hit max_tokens
    advantages: torch.Tensor | None = None  # [N, T]
    old_logprobs: torch.Tensor | None = None  # [N, T] trainer logprobs before the update
    ref_logprobs: torch.Tensor | None = None  # [N, T] reference-policy logprobs
    old_entropy: torch.Tensor | None = None  # [N, T] trainer token entropy before the update
    proxy_logprobs: torch.Tensor | None = None  # [N, T] Lp-Reg min-p proxy logprobs of the sampled tokens
    values: torch.Tensor | None = None  # [N, T] critic values V(s_t) before the update
    baseline_rewards: torch.Tensor | None = None  # [N] reward of a baseline response to the same prompt
    returns: torch.Tensor | None = None  # [N, T] critic regression targets
    token_weights: torch.Tensor | None = None  # [N, T] token reweighting / selection; 0 drops a token

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, index: slice | torch.Tensor) -> RolloutBatch:
        """Rows ``index`` of every tensor field (None fields stay None)."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = value[index] if isinstance(value, torch.Tensor) else value
        return RolloutBatch(**values)

    def trimmed(self) -> RolloutBatch:
        """The same rows without the padding columns none of them uses: responses cut after the last
        column any response reaches, prompts (left-padded) before the first column any prompt starts at.
        Every ``[N, T]`` field is cut like the responses. Positions come from the masks, so a forward on
        the trimmed rows computes exactly what it computes on the padded ones."""
        used_t = self.response_mask.bool().any(0).nonzero()
        width_t = max(1, int(used_t.max()) + 1 if used_t.numel() else 1)
        used_p = self.prompt_mask.bool().any(0).nonzero()
        start_p = int(used_p.min()) if used_p.numel() else self.prompt_mask.shape[1] - 1
        full_t = self.response_ids.shape[1]
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("prompt_ids", "prompt_mask"):
                value = value[:, start_p:]
            elif isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == full_t:
                value = value[:, :width_t]
            values[f.name] = value
        return RolloutBatch(**values)

    def to(self, device: torch.device | str) -> RolloutBatch:
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = value.to(device) if isinstance(value, torch.Tensor) else value
        return RolloutBatch(**values)
