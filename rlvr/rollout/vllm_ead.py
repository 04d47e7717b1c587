"""EAD per-token temperature inside vLLM: a logits processor loaded into the engine's worker processes.

The engine passes ``logits_processors=[PROCESSOR]`` (a ``module:Class`` path, imported by each worker)
when built with ``EngineOptions(temperature_schedule=True)``; a request opts in through
``SamplingParams(temperature=1.0, extra_args=EADSchedule.to_extra_args())``. The processor divides that
request's logits by τ_t, t = number of tokens the request has generated so far.

vLLM 0.32 has two model runners with two logits-processor interfaces, and picks the runner itself
(``VllmConfig.use_v2_model_runner``: V1 on CPU, where Triton is unavailable; V2 by default on GPU).
:class:`EADLogitsProcessor` implements both, so one class path works with either:

* V1 (``vllm/v1/sample/sampler.py``): ``Sampler.forward`` -> ``sample()`` applies the request
  temperature (1.0 here), then the *argmax-invariant* processors (this one: dividing by τ > 0 never
  changes the argmax), then ``TopKTopPSampler`` masks top-k/top-p and, in ``processed_logprobs`` mode,
  takes ``log_softmax`` of those logits (``vllm/v1/sample/ops/topk_topp_sampler.py``,
  ``forward_cpu`` / ``forward_native``) before sampling from them. So the returned logprob of the sampled
  token is ``log_softmax(top_k_top_p(logits / τ_t))``: the distribution actually sampled from. t is
  ``len(output_token_ids)`` of the request, a live reference that vLLM extends after every step (with
  ``-1`` placeholders under async scheduling, so the length is right there too).
* V2 (``vllm/v1/worker/gpu/sample/sampler.py``): ``apply_sampling_params`` runs the custom processors
  after bias/penalties/bad words and before temperature, min_p and top-k/top-p; ``Sampler.__call__``
  computes the logprobs from the processed logits. t = ``pos + 1 - prompt_len`` per logits row, all
  on device (no host sync).
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from rlvr.rollout.ead import EADSchedule, ead_temperature, ead_temperatures

try:  # vLLM >= 0.2x: the V2 model runner's interface (absent in older vllm; V1 then suffices)
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor
except ImportError:  # pragma: no cover - depends on the installed vllm
    V2LogitsProcessor = None

PROCESSOR = "rlvr.rollout.vllm_ead:EADLogitsProcessor"
"""What the engine passes in ``LLM(logits_processors=[...])``: imported by path in every worker."""

_BASES = (V1LogitsProcessor,) if V2LogitsProcessor is None else (V1LogitsProcessor, V2LogitsProcessor)


class EADLogitsProcessor(*_BASES):
    """Divides the logits of requests that carry an :class:`EADSchedule` by their current τ_t.

    Constructed by vLLM as ``(vllm_config, device, is_pin_memory)`` under the V1 model runner and as
    ``(vllm_config, req_states)`` under V2; the two halves below share only the schedule maths.
    """

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        """Runs at request admission (both runners): a malformed schedule fails the request."""
        schedule = EADSchedule.from_extra_args(sampling_params.extra_args)
        if schedule is not None and sampling_params.temperature != 1.0:
            raise ValueError(
                "an EAD temperature schedule replaces temperature, which must be 1.0; "
                f"got {sampling_params.temperature}"
            )

    def __init__(self, vllm_config, *runner_args) -> None:
        self._v2 = len(runner_args) == 1
        if self._v2:
            self._init_v2(vllm_config, runner_args[0])
        else:
            # V1: request batch index -> (schedule, live list of the request's output token ids)
            self._rows: dict[int, tuple[EADSchedule, list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        """V1: True, so vLLM applies it right after the request temperature and skips it for greedy-only
        batches (an EAD request has temperature 1.0, so it is never greedy)."""
        return True

    def apply(self, logits: torch.Tensor, ctx=None) -> torch.Tensor:
        return self._apply_v2(logits, ctx) if self._v2 else self._apply_v1(logits)

    # ---- V1 model runner ---------------------------------------------------------------------------

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new_state(params, _prompt_ids, output_ids):
            schedule = EADSchedule.from_extra_args(params.extra_args)
            return None if schedule is None else (schedule, output_ids)

        process_dict_updates(self._rows, batch_update, new_state)

    def _apply_v1(self, logits: torch.Tensor) -> torch.Tensor:  # logits [B, V] float32
        if not self._rows:
            return logits
        taus = [1.0] * logits.shape[0]  # requests without a schedule: divided by 1.0
        for row, (schedule, output_ids) in self._rows.items():
            taus[row] = ead_temperature(len(output_ids), **vars(schedule))
        tau = torch.tensor(taus, dtype=logits.dtype).to(logits.device, non_blocking=True)  # [B]
        return logits.div_(tau.unsqueeze(1))

    # ---- V2 model runner ---------------------------------------------------------------------------

    def _init_v2(self, vllm_config, req_states) -> None:
        self._req_states = req_states
        size = req_states.max_num_reqs
        # Per request slot: enabled, prompt_len, tau_max, tau_min, decay, warmup. Written on the host in
        # add_request(), copied to the device once per step in apply_staged_writes() if anything changed.
        self._slots_np = np.zeros((6, size), dtype=np.float32)
        self._slots_np[4] = 1.0  # decay of unused slots: keeps exp(t / d) finite
        self._slots = torch.from_numpy(self._slots_np).to(req_states.device)  # [6, S]
        self._dirty = False

    def add_request(self, req_idx: int, sampling_params) -> bool:
        schedule = EADSchedule.from_extra_args(sampling_params.extra_args)
        column = self._slots_np[:, req_idx]
        if schedule is None:
            column[0] = 0.0
        else:
            prompt_len = float(self._req_states.prompt_len.np[req_idx])  # set by the runner just before
            column[:] = (
                1.0,
                prompt_len,
                schedule.tau_max,
                schedule.tau_min,
                schedule.decay,
                schedule.warmup_tokens,
            )
        self._dirty = True
        return schedule is not None

    def apply_staged_writes(self) -> None:
        if self._dirty:
            self._slots.copy_(torch.from_numpy(self._slots_np))
            self._dirty = False

    def _apply_v2(self, logits: torch.Tensor, ctx) -> torch.Tensor:  # logits [N, V] float32
        if not self._slots_np[0, ctx.idx_mapping_np].any():
            return logits
        enabled, prompt_len, tau_max, tau_min, decay, warmup = self._slots[:, ctx.expanded_idx_mapping]  # [N]
        generated = ctx.pos.to(torch.float32) + 1.0 - prompt_len  # row at position pos samples token pos + 1
        tau = ead_temperatures(generated, tau_max=tau_max, tau_min=tau_min, decay=decay, warmup_tokens=warmup)
        tau = torch.where(enabled > 0, tau, torch.ones_like(tau))
        return logits.div_(tau.unsqueeze(1))
