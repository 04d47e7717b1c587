"""Reference rollout engine on ``transformers.generate``: slow, simple, exact.

Used to cross-check vLLM (greedy outputs must agree for the same weights) and in tests where starting a
vLLM engine would dominate the run time. It keeps its own copy of the weights on the trainer's device.
An EAD temperature schedule is a transformers logits processor (:class:`EADTemperature`); ``generate``
runs custom processors before its temperature / top-k / top-p warpers and returns the processed scores,
so the reported logprobs are ``log_softmax(top_k_top_p(logits / τ_t))``, as in the vLLM engine.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from rlvr.rollout.base import ENGINES, Completion, EngineOptions, SamplingConfig
from rlvr.rollout.broadcast import GroupInfo, close_group, open_group, receive_into
from rlvr.rollout.ead import EADSchedule


class EADTemperature(LogitsProcessor):
    """Divides the scores of the t-th generated token by the schedule's τ_t (every row is at the same t)."""

    def __init__(self, schedule: EADSchedule, prompt_width: int) -> None:
        self.schedule = schedule
        self.prompt_width = prompt_width
        """Width of the left-padded prompt block: the number of generated tokens is the rest."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores / self.schedule.temperature(input_ids.shape[1] - self.prompt_width)


@ENGINES.register("hf")
class HFEngine:
    def __init__(self, model_path: str, options: EngineOptions) -> None:
        self.device = torch.device(options.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        dtype = getattr(torch, options.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        self.batch_size = int(options.extra.get("batch_size", 64))
        self.eos_ids = self._eos_ids()
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        )

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> list[Completion]:
        jobs = [(i, ids) for i, ids in enumerate(prompt_ids) for _ in range(sampling.n)]
        completions: list[Completion] = []
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            seed = None if sampling.seed is None else sampling.seed + start
            completions.extend(self._generate_chunk(chunk, sampling, seed))
        return completions

    def _generate_chunk(self, chunk, sampling: SamplingConfig, seed: int | None) -> list[Completion]:
        width = max(len(ids) for _, ids in chunk)
        input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)  # [n, P] left-padded
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, ids) in enumerate(chunk):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        generator_kwargs: dict = {"do_sample": False}
        if not sampling.greedy:
            generator_kwargs = dict(
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k > 0 else None,
            )
        if sampling.temperature_schedule is not None:
            generator_kwargs["logits_processor"] = LogitsProcessorList(
                [EADTemperature(sampling.temperature_schedule, prompt_width=width)]
            )
        if seed is not None:
            torch.manual_seed(seed)
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            max_new_tokens=sampling.max_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            output_scores=True,
            return_dict_in_generate=True,
            # the engine's copy is whole and local: under ZeRO-3 transformers would otherwise sync every
            # decoding step with the other ranks, which deadlocks when they generate different amounts
            synced_gpus=False,
            **generator_kwargs,
        )
        new_tokens = out.sequences[:, width:].cpu()  # [n, T]
        scores = torch.stack(out.scores, dim=1).float().cpu()  # [n, T, V] processed logits
        logprobs = (
            torch.log_softmax(scores, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        )  # [n, T]
        results = []
        for row, (prompt_index, _) in enumerate(chunk):
            ids, finish = self._cut(new_tokens[row].tolist(), sampling.stop)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for stop in sampling.stop:
                if finish == "stop" and stop in text:
                    text = text[: text.index(stop)]  # like vLLM: the stop string is not part of the text
            results.append(
                Completion(
                    prompt_index=prompt_index,
                    token_ids=ids,
                    logprobs=logprobs[row, : len(ids)].tolist(),
                    text=text,
                    finish_reason=finish,
                )
            )
        return results

    def _cut(self, ids: list[int], stops: tuple[str, ...]) -> tuple[list[int], str]:
        """Generated ids up to and including EOS or the token that completes a stop string.

        Stop strings are matched here, on the generated text only, as vLLM does (transformers' own
        stop-string criterion also matches across the end of the prompt).
        """
        for pos, tok in enumerate(ids):
            if tok in self.eos_ids:
                return ids[: pos + 1], "stop"
            if stops and any(s in self.tokenizer.decode(ids[: pos + 1]) for s in stops):
                return ids[: pos + 1], "stop"
        return ids, "length"

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the model; a name it does not have is an error (a sync that changed
        nothing would go unnoticed). Tied weights arrive under each of their names."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        for name, tensor in named_tensors:
            if name not in params:
                raise KeyError(f"weight sync: the engine's model has no parameter named {name!r}")
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))

    receivers = 1
    """Processes that receive broadcast weights: this one."""

    def join_weight_group(self, info: GroupInfo) -> None:
        """Server side: join the trainer's weight group (:mod:`rlvr.rollout.broadcast`), releasing the
        last run's."""
        previous, self.weight_group = getattr(self, "weight_group", None), None
        if previous is not None:
            close_group(previous)
        self.weight_group = open_group(info, info.rank_offset)

    def receive_weights(self) -> None:
        """Server side: copy one broadcast sync into the model as its buckets arrive."""
        receive_into(self.update_weights, self.weight_group, self.model.device)

    def release_memory(self) -> None:
        """Nothing to free: transformers allocates its cache per ``generate`` call."""

    def close(self) -> None:
        self.model = None
