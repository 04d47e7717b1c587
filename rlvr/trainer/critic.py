"""The learned critic of PPO: a value head on a transformer trunk, trained next to the policy.

Policy and critic are two models in one :class:`PolicyWithCritic` module, so they are prepared, sharded
(ZeRO 1/2/3), checkpointed and stepped as one DeepSpeed engine with one optimizer (two parameter
groups, so the critic can have its own learning rate). The module's ``forward`` is the policy's, so code
that computes log-probabilities does not know the critic is there; :func:`policy_of` returns the policy
for weight sync and the final HF folder.

The critic is ``AutoModelForTokenClassification`` with one label: the trunk of the policy checkpoint (or of
``algorithm.critic.model``) and a linear value head, zero-initialised so that the first values are 0.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForTokenClassification

from rlvr.trainer.batch import row_attention
from rlvr.types import RolloutBatch


class PolicyWithCritic(torch.nn.Module):
    """``policy`` and ``critic`` as one trainable module; calling it runs the policy."""

    def __init__(self, policy: torch.nn.Module, critic: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.config = policy.config

    def forward(self, *args, value_batch: RolloutBatch | None = None, **kwargs):
        """The policy's forward; with ``value_batch``, the critic's values of that batch instead.

        Both go through this one entry point so that DeepSpeed's wrappers (ZeRO-3 parameter fetching,
        mixed precision) see every forward pass: call ``model(value_batch=batch)`` on the prepared model.
        """
        if value_batch is not None:
            return self.values(value_batch)
        return self.policy(*args, **kwargs)

    def values(self, batch: RolloutBatch) -> torch.Tensor:
        """``[N, T]`` value V(s_t) of the state before each response token (prompt + tokens < t)."""
        input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)  # [N, P+T]
        attention, position_ids = row_attention(batch)  # [N, P+T] each
        out = self.critic(input_ids=input_ids, attention_mask=attention, position_ids=position_ids)
        width_p, width_t = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
        # position P-1+t has seen the prompt and tokens < t: the state in which token t is chosen
        return out.logits[:, width_p - 1 : width_p - 1 + width_t, 0].float()  # [N, T]


def policy_of(model: torch.nn.Module) -> torch.nn.Module:
    """The policy inside an (unwrapped) model: itself, or the ``policy`` of a :class:`PolicyWithCritic`."""
    return model.policy if isinstance(model, PolicyWithCritic) else model


def load_critic(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """A one-output token-classification model on the trunk at ``path``, value head set to zero."""
    config = AutoConfig.from_pretrained(path, num_labels=1)
    config.classifier_dropout = 0.0  # a regression head: no dropout
    critic = AutoModelForTokenClassification.from_pretrained(path, config=config, dtype=dtype)
    head = getattr(critic, "score", None) or getattr(critic, "classifier", None)
    if head is None:
        raise ValueError(f"{path}: no value head (score / classifier) on {type(critic).__name__}")
    with torch.no_grad():
        _zero_gathered(head)
    critic.config.use_cache = False
    return critic


def _zero_gathered(module: torch.nn.Module) -> None:
    """Zero ``module``'s parameters, gathering them first when ZeRO-3 partitioned them at load time."""
    params = list(module.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            for p in params:
                p.zero_()
    else:
        for p in params:
            p.zero_()
