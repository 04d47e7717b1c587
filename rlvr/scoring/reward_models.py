"""The reward-model runner: ``transformers`` sequence-classification models that score (prompt, completion)
pairs in batches, their score normalisation, and ensembles of them.

Verifiers (:mod:`rlvr.scoring.api`) are the first kind of scorer; reward models are the second: batched and
model-backed. Both kinds of reward model here share one small contract, :class:`RewardScorer`::

    scores = rm.score(prompts, completions)        # [N] float32 on the CPU, one score per pair

* :class:`RewardModel` wraps one ``AutoModelForSequenceClassification`` checkpoint with a single output
  (``num_labels == 1``, the Bradley-Terry reward head of InstructGPT, Ouyang et al. 2022, arXiv 2203.02155,
  as trained by TRL's ``RewardTrainer`` and most open reward models). It runs on the trainer's device, in
  length-sorted batches, with optional score normalisation (:class:`ScoreNormalizer`).
* :class:`RewardModelEnsemble` combines several scorers with an ensemble objective looked up by name in
  :data:`~rlvr.scoring.api.ENSEMBLE_COMBINES`. The built-in objectives (``mean``, ``min``/``wco``, ``uwo``,
  Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization", arXiv 2310.02743) are
  defined in ``rewards/reward_models.py``; a user registers more with
  :func:`~rlvr.scoring.api.ensemble_combine`.
* :func:`build_reward_model` builds either from a recipe-like dict.

Scores are returned on the CPU as float32 so they can be summed with verifier scores; only the model's
inputs and forward pass live on ``device``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NoReturn, Protocol, runtime_checkable

import torch

from rlvr.registry import PluginArgumentError
from rlvr.scoring.api import DEFAULT_UWO_LAMBDA, ENSEMBLE_COMBINES

logger = logging.getLogger(__name__)

NormalizeMode = Literal["none", "batch", "running"]
NORMALIZE_MODES = ("none", "batch", "running")

# Private-use code points that never occur in real prompts; used to locate the prompt inside a chat template.
_PROMPT_SENTINEL = "\ue000rlvr-prompt\ue000"
_COMPLETION_SENTINEL = "\ue001rlvr-completion\ue001"


@runtime_checkable
class RewardScorer(Protocol):
    """Anything that scores (prompt, completion) pairs in one batched call."""

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Return ``[N]`` scores, ``N = len(prompts) == len(completions)``."""
        ...


# --------------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------------


class ScoreNormalizer:
    """Whiten reward-model scores, which have an arbitrary offset and scale (a Bradley-Terry head is only
    identified up to a constant).

    Modes (``mode``):

    * ``"none"``: scores pass through unchanged.
    * ``"batch"``: ``(x - mean) / std`` over the scores of this call.
    * ``"running"``: ``(x - running_mean) / running_std`` over every score seen so far, this call's included.
      The statistics are merged batch by batch with Welford's / Chan et al.'s parallel update (in float64),
      so the result does not depend on how scores were split into calls. :meth:`state_dict` /
      :meth:`load_state_dict` carry them through checkpoints.

    Both use the population standard deviation (divide by the count). Where it is below ``eps`` (all scores
    equal, or one score) the scores are only centred, never divided by ~0. In a multi-process run each
    process keeps its own running statistics over the scores it sees; gather scores first (and pass them in
    one call) if the processes must agree exactly.
    """

    def __init__(self, mode: NormalizeMode = "none", eps: float = 1e-6) -> None:
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"unknown normalize mode {mode!r}; expected one of {', '.join(NORMALIZE_MODES)}")
        self.mode = mode
        self.eps = float(eps)
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the running mean

    @property
    def std(self) -> float:
        """Running population standard deviation (0 before any score was seen)."""
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def update(self, scores: torch.Tensor) -> None:
        """Merge a batch of scores into the running statistics (Chan et al. 1979 parallel variance)."""
        x = scores.detach().to(torch.float64).flatten()
        n_b = x.numel()
        if n_b == 0:
            return
        mean_b = x.mean().item()
        m2_b = ((x - mean_b) ** 2).sum().item()
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * n_a * n_b / n
        self.count = n

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """Normalise ``scores`` ([N]); in ``"running"`` mode, update the statistics with them first."""
        if self.mode == "none" or scores.numel() == 0:
            return scores
        if self.mode == "batch":
            x = scores.to(torch.float64)
            mean, std = x.mean(), x.std(unbiased=False)
            denom = std if std > self.eps else torch.ones_like(std)
            return ((x - mean) / denom).to(scores.dtype)
        self.update(scores)
        denom = self.std if self.std > self.eps else 1.0
        return ((scores.to(torch.float64) - self.mean) / denom).to(scores.dtype)

    def state_dict(self) -> dict[str, float | int]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])


# --------------------------------------------------------------------------------------------------------
# One reward model
# --------------------------------------------------------------------------------------------------------


class RewardModel:
    """A ``transformers`` sequence-classification reward model scoring (prompt, completion) pairs.

    Args:
        path: a local model folder or hub id (resolved with :func:`rlvr.models.resolve_model`). Its config
            must have ``num_labels == 1`` (a scalar reward head).
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``): pass the
            trainer's device.
        dtype: weights dtype name (``"float32"``, ``"bfloat16"``, ``"float16"``) or a ``torch.dtype``.
        batch_size: pairs per forward pass. Pairs are sorted by token length (longest first) before
            batching so each batch pads little; scores come back in the input order.
        max_length: most tokens per pair. A longer pair loses tokens from the *start of the prompt* (left
            truncation of the prompt), so the completion, which is what is being judged, is kept whole;
            only if the completion plus the template alone exceed ``max_length`` is the sequence cut from the
            left as a whole (a warning is logged once).
        normalize: ``"none"``, ``"batch"`` or ``"running"`` (see :class:`ScoreNormalizer`).
        chat_template: when True and the tokenizer has a chat template, the text scored is the template over
            ``[{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]`` (without
            a generation prompt), the format chat reward models are trained on; otherwise it is
            ``prompt + completion`` tokenized with the tokenizer's special tokens (e.g. BOS).
        trust_remote_code: passed to ``from_pretrained`` (some published reward models need it).

    Padding. Sequences are right-padded. ``transformers`` sequence-classification models pool the logit of
    the right-most token that is not ``config.pad_token_id``, and refuse batches when it is unset, so the
    tokenizer's pad token (falling back to EOS when it has none) is written into ``config.pad_token_id``.
    With the EOS fallback a pair that *ends* in EOS is pooled at the token before its trailing EOS: the
    same token as an unpadded forward, and the same rule the model was trained with.
    """

    def __init__(
        self,
        path: str,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        batch_size: int = 8,
        max_length: int = 1024,
        normalize: NormalizeMode = "none",
        chat_template: bool = True,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from rlvr.models import resolve_model

        if batch_size < 1:
            raise ValueError(f"reward model batch_size must be >= 1, got {batch_size}")
        if max_length < 1:
            raise ValueError(f"reward model max_length must be >= 1, got {max_length}")
        self.path = str(path)
        self.device = torch.device(device)
        self.dtype = _parse_dtype(dtype)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.normalizer = ScoreNormalizer(normalize)
        self._warned_truncation = False

        source = resolve_model(path)
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        if getattr(config, "num_labels", None) != 1:
            archs = ", ".join(getattr(config, "architectures", None) or []) or "unknown architecture"
            raise ValueError(
                f"reward model {self.path!r} has num_labels={getattr(config, 'num_labels', None)} ({archs}); "
                "a reward model needs a sequence-classification head with num_labels=1 (one scalar score). "
                "A causal-LM or classifier checkpoint is not a reward model."
            )

        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError(
                    f"reward model {self.path!r}: its tokenizer has neither a pad nor an eos token"
                )
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.pad_token_id = int(tokenizer.pad_token_id)

        model, info = AutoModelForSequenceClassification.from_pretrained(
            source,
            config=config,
            dtype=self.dtype,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
        missing = list(info.get("missing_keys") or [])
        if missing:
            raise ValueError(
                f"reward model {self.path!r}: weights missing from the checkpoint (they would be random): "
                f"{', '.join(sorted(missing)[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        text_config = model.config.get_text_config()
        if text_config.pad_token_id != self.pad_token_id:
            if text_config.pad_token_id is not None:
                logger.warning(
                    "reward model %s: config.pad_token_id=%s differs from the tokenizer's pad id %s; "
                    "using the tokenizer's",
                    self.path,
                    text_config.pad_token_id,
                    self.pad_token_id,
                )
            text_config.pad_token_id = self.pad_token_id
            model.config.pad_token_id = self.pad_token_id
        model.eval()
        model.requires_grad_(False)
        self.model = model.to(self.device)
        self.use_chat_template = bool(chat_template and getattr(tokenizer, "chat_template", None))
        self._template_parts = self._split_template() if self.use_chat_template else None

    # ---- text and tokens ---------------------------------------------------------------------------------

    def _render_template(self, prompt: str, completion: str) -> str:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        if not isinstance(text, str):  # pragma: no cover - tokenize=False always gives text
            raise TypeError(f"reward model {self.path!r}: chat template did not render to text")
        return text

    def _split_template(self) -> tuple[str, str, str] | None:
        """(head, middle, tail) with text = head + prompt + middle + completion + tail, when the template
        inserts the messages verbatim; None when it rewrites them (then truncation cannot single out the
        prompt and falls back to cutting the whole sequence from the left)."""
        text = self._render_template(_PROMPT_SENTINEL, _COMPLETION_SENTINEL)
        if text.count(_PROMPT_SENTINEL) != 1 or text.count(_COMPLETION_SENTINEL) != 1:
            return None
        head, rest = text.split(_PROMPT_SENTINEL)
        if _COMPLETION_SENTINEL not in rest:  # the template puts the completion before the prompt
            return None
        middle, tail = rest.split(_COMPLETION_SENTINEL)
        return head, middle, tail

    def build_text(self, prompt: str, completion: str) -> tuple[str, tuple[int, int] | None]:
        """The text scored for one pair and the character span of the prompt inside it (None if unknown)."""
        if not self.use_chat_template:
            return prompt + completion, (0, len(prompt))
        text = self._render_template(prompt, completion)
        if self._template_parts is not None:
            head, middle, tail = self._template_parts
            if text == head + prompt + middle + completion + tail:
                return text, (len(head), len(head) + len(prompt))
        return text, None

    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> list[list[int]]:
        """Token ids of every pair, at most ``max_length`` each (see the class docstring on truncation)."""
        built = [self.build_text(p, c) for p, c in zip(prompts, completions, strict=True)]
        texts = [text for text, _ in built]
        with_offsets = bool(getattr(self.tokenizer, "is_fast", False))
        enc = self.tokenizer(
            texts,
            add_special_tokens=not self.use_chat_template,  # a chat template writes its own special tokens
            return_offsets_mapping=with_offsets,
            return_attention_mask=False,
            verbose=False,  # no "longer than model_max_length" warning: we truncate below
        )
        out = []
        for i, ids in enumerate(enc["input_ids"]):
            ids = list(ids)
            excess = len(ids) - self.max_length
            if excess > 0:
                span = built[i][1]
                if span is not None and with_offsets:
                    p0, p1 = span
                    prompt_tokens = [
                        j
                        for j, (s, e) in enumerate(enc["offset_mapping"][i])
                        if e > s and s >= p0 and e <= p1
                    ]
                    drop = set(prompt_tokens[:excess])
                    ids = [t for j, t in enumerate(ids) if j not in drop]
                if len(ids) > self.max_length:
                    if not self._warned_truncation:
                        logger.warning(
                            "reward model %s: a completion (plus template) is longer than max_length=%d; "
                            "keeping its last %d tokens",
                            self.path,
                            self.max_length,
                            self.max_length,
                        )
                        self._warned_truncation = True
                    ids = ids[-self.max_length :]
            out.append(ids)
        return out

    # ---- scoring -----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def raw_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Un-normalised scores ``[N]`` (float32, CPU), in input order."""
        _check_pairs(prompts, completions)
        if not prompts:
            return torch.empty(0, dtype=torch.float32)
        ids = self.encode(prompts, completions)
        scores = torch.empty(len(ids), dtype=torch.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)  # longest first
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = len(ids[rows[0]])
            input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # [B, T]
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
            for b, i in enumerate(rows):  # right padding
                input_ids[b, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                attention_mask[b, : len(ids[i])] = 1
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            ).logits  # [B, 1]
            scores[rows] = logits[:, 0].float().cpu()
        return scores

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Scores ``[N]`` (float32, CPU) of ``completions[i]`` as answers to ``prompts[i]``, normalised per
        ``normalize``."""
        return self.normalizer(self.raw_scores(prompts, completions))

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state: the running normaliser's statistics (the weights are read-only)."""
        return {"normalizer": self.normalizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.normalizer.load_state_dict(state["normalizer"])


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; expected e.g. 'float32', 'bfloat16' or 'float16'")
    return value


def _check_pairs(prompts: Sequence[str], completions: Sequence[str]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")


# --------------------------------------------------------------------------------------------------------
# Ensembles
# --------------------------------------------------------------------------------------------------------


class RewardModelEnsemble:
    """Several reward models combined into one conservative score (Coste et al. 2023, arXiv 2310.02743).

    Args:
        members: :class:`RewardModel` instances or any objects with ``score(prompts, completions) -> [N]``.
        combine: a name in :data:`ENSEMBLE_COMBINES`: ``"mean"``, ``"min"`` (alias ``"wco"``, worst-case
            optimisation) or ``"uwo"`` (uncertainty-weighted optimisation, mean - lam * variance).
        lam: the UWO coefficient lambda (default :data:`DEFAULT_UWO_LAMBDA`, the paper's PPO value).
        normalize: per-member normalisation applied to each member's scores *before* combining (one
            :class:`ScoreNormalizer` per member). Members trained separately have unrelated offsets and
            scales, so without it ``min`` picks whichever member has the lowest offset and the UWO variance
            mixes scale differences with genuine disagreement. ``"running"`` (default) keeps each member's
            scale stable across steps; ``"batch"`` whitens each call; ``"none"`` trusts the members (e.g.
            when they normalise themselves, or share a calibration).
        names: labels for the members in :attr:`last_metrics` (default ``"rm0"``, ``"rm1"``, ...).

    After each :meth:`score`, :attr:`last_metrics` holds (keys relative; the caller namespaces them, e.g.
    under ``reward/<name>/``): ``<member name>/mean`` (each member's mean score after normalisation),
    ``disagreement_std`` (mean over pairs of the population std across members), ``mean`` (mean combined
    score).
    """

    def __init__(
        self,
        members: Sequence[RewardScorer],
        *,
        combine: str = "mean",
        lam: float = DEFAULT_UWO_LAMBDA,
        normalize: NormalizeMode = "running",
        names: Sequence[str] | None = None,
    ) -> None:
        if not members:
            raise ValueError("a reward-model ensemble needs at least one member")
        for m in members:
            if not callable(getattr(m, "score", None)):
                raise TypeError(f"ensemble member {m!r} has no score(prompts, completions) method")
        self.members = list(members)
        self.combine_name = combine
        self.combine = ENSEMBLE_COMBINES.get(combine)
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"ensemble lam must be a finite number >= 0, got {lam}")
        self.lam = float(lam)
        self.normalizers = [ScoreNormalizer(normalize) for _ in self.members]
        self.names = [str(n) for n in names] if names is not None else [f"rm{i}" for i in range(len(members))]
        if len(self.names) != len(self.members) or len(set(self.names)) != len(self.names):
            raise ValueError(f"ensemble names must be {len(self.members)} distinct labels, got {self.names}")
        self.last_metrics: dict[str, float] = {}

    def member_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Every member's (normalised) scores, ``[M, N]`` float32."""
        _check_pairs(prompts, completions)
        rows = []
        for member, normalizer in zip(self.members, self.normalizers, strict=True):
            s = torch.as_tensor(member.score(prompts, completions)).detach().float().cpu().flatten()  # [N]
            if s.numel() != len(prompts):
                raise ValueError(f"ensemble member {member!r} returned {s.numel()} scores for {len(prompts)}")
            rows.append(normalizer(s))
        return torch.stack(rows)  # [M, N]

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Combined scores ``[N]`` (float32, CPU); fills :attr:`last_metrics`."""
        member_scores = self.member_scores(prompts, completions)  # [M, N]
        combined = self.combine(member_scores, self.lam)  # [N]
        metrics: dict[str, float] = {}
        if member_scores.shape[1] > 0:
            for name, row in zip(self.names, member_scores, strict=True):
                metrics[f"{name}/mean"] = row.mean().item()
            metrics["disagreement_std"] = member_scores.std(dim=0, unbiased=False).mean().item()
            metrics["mean"] = combined.mean().item()
        self.last_metrics = metrics
        return combined

    def state_dict(self) -> dict[str, Any]:
        """Per-member normaliser statistics, plus each member's own state where it has one."""
        return {
            "normalizers": [n.state_dict() for n in self.normalizers],
            "members": [m.state_dict() if hasattr(m, "state_dict") else None for m in self.members],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["normalizers"]) != len(self.normalizers):
            raise ValueError(
                f"ensemble state has {len(state['normalizers'])} members; this ensemble has "
                f"{len(self.normalizers)}"
            )
        for normalizer, s in zip(self.normalizers, state["normalizers"], strict=True):
            normalizer.load_state_dict(s)
        for member, s in zip(self.members, state.get("members") or [None] * len(self.members), strict=True):
            if s is not None and hasattr(member, "load_state_dict"):
                member.load_state_dict(s)


# --------------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------------

_MODEL_KEYS = {
    "path",
    "device",
    "dtype",
    "batch_size",
    "max_length",
    "normalize",
    "chat_template",
    "trust_remote_code",
}
_ENSEMBLE_KEYS = {"ensemble", "combine", "lam", "normalize", "names"}


def build_reward_model(
    spec: Mapping[str, Any],
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> RewardModel | RewardModelEnsemble:
    """Build a reward model from a recipe-like dict.

    One model: ``{path, normalize?, batch_size?, max_length?, chat_template?, dtype?, device?,
    trust_remote_code?}`` (defaults as in :class:`RewardModel`).

    An ensemble: ``{ensemble: [model spec, ...], combine?: mean|min|wco|uwo, lam?, normalize?, names?}``;
    the top-level ``normalize`` is the per-member normalisation before combining (default ``"running"``),
    and a member's own ``normalize`` defaults to ``"none"``. A member spec may be a bare path string.

    ``device`` / ``dtype`` (the trainer's) are used where a spec does not set its own. Unknown keys are an
    error, so a typo in a recipe fails before any model loads.
    """
    if not isinstance(spec, Mapping):
        raise TypeError(f"a reward-model spec must be a mapping, got {type(spec).__name__}")
    check_reward_model_spec(spec)  # every key and value, before loading any model
    if "ensemble" in spec:
        combine = spec.get("combine", "mean")
        members = []
        for member in spec["ensemble"]:
            member = {"path": member} if isinstance(member, str) else dict(member)
            member.setdefault("normalize", "none")
            members.append(build_reward_model(member, device=device, dtype=dtype))
        return RewardModelEnsemble(
            members,
            combine=combine,
            lam=float(spec.get("lam", DEFAULT_UWO_LAMBDA)),
            normalize=spec.get("normalize", "running"),
            names=spec.get("names"),
        )
    kwargs = {k: v for k, v in spec.items() if k != "path"}
    if device is not None:
        kwargs.setdefault("device", device)
    if dtype is not None:
        kwargs.setdefault("dtype", dtype)
    return RewardModel(str(spec["path"]), **kwargs)


def check_reward_model_spec(spec: Any) -> None:
    """Check a :func:`build_reward_model` spec without loading anything: known keys, a ``path`` or a
    non-empty ``ensemble`` list (not nested), a registered ``combine``, and the type and range of ``lam``,
    ``normalize``, ``names``, ``batch_size``, ``max_length``, ``chat_template``, ``trust_remote_code``,
    ``dtype`` and ``device``. Whether ``path`` holds a reward model is only known when it loads.

    Raises :class:`~rlvr.registry.PluginArgumentError` (a ``ValueError``) whose ``argument`` is the offending
    key, dotted from the top of the spec (``ensemble[1].batch_size``), so the recipe check
    (``rlvr.config``) names ``rewards.reward_models[i].model.<key>``.
    """
    _check_spec(spec, "", member=False)


def _check_spec(spec: Any, at: str, member: bool) -> None:
    """:func:`check_reward_model_spec` of the spec (or ensemble member, ``member``) found at key ``at``."""

    def fail(key: str, message: str) -> NoReturn:
        raise PluginArgumentError(message, f"{at}{key}".rstrip(".") or None)

    if member and isinstance(spec, str):
        if not spec.strip():
            fail("", "a reward-model ensemble member path must not be empty")
        return
    if not isinstance(spec, Mapping):
        fail("", f"a reward-model spec must be a mapping{' or a path' if member else ''}, got {spec!r}")
    ensemble = "ensemble" in spec
    if ensemble and member:
        fail("ensemble", "reward-model ensembles cannot be nested")
    allowed, what = (_ENSEMBLE_KEYS, "reward-model ensemble") if ensemble else (_MODEL_KEYS, "reward model")
    unknown = sorted(set(spec) - allowed)
    if unknown:
        fail(str(unknown[0]), f"unknown {what} key(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    if "normalize" in spec and spec["normalize"] not in NORMALIZE_MODES:
        fail("normalize", f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {spec['normalize']!r}")
    if ensemble:
        members = spec["ensemble"]
        if not isinstance(members, list | tuple) or not members:
            fail(
                "ensemble",
                f"reward-model 'ensemble' must be a non-empty list of model specs, got {members!r}",
            )
        combine = spec.get("combine", "mean")
        if not isinstance(combine, str) or combine not in ENSEMBLE_COMBINES:
            known = ", ".join(ENSEMBLE_COMBINES.names())
            fail("combine", f"unknown reward-model ensemble combine {combine!r}; known: {known}")
        lam = spec.get("lam", DEFAULT_UWO_LAMBDA)
        if not _is_number(lam) or not (math.isfinite(lam) and lam >= 0):
            fail("lam", f"ensemble lam must be a finite number >= 0, got {lam!r}")
        names = spec.get("names")
        if names is not None and (
            not isinstance(names, list | tuple)
            or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)
            or len(names) != len(members)
        ):
            fail("names", f"names must be {len(members)} distinct strings (one per member), got {names!r}")
        for k, m in enumerate(members):
            _check_spec(m, f"{at}ensemble[{k}].", member=True)
        return
    path = spec.get("path")
    if not isinstance(path, str | os.PathLike) or not str(path).strip():
        fail(
            "path", f"a reward-model spec needs 'path' (or 'ensemble': [...]), got path={spec.get('path')!r}"
        )
    for key in ("batch_size", "max_length"):
        value = spec.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(key, f"{key} must be an integer >= 1, got {value!r}")
    for key in ("chat_template", "trust_remote_code"):
        if not isinstance(spec.get(key, True), bool):
            fail(key, f"{key} must be true or false, got {spec[key]!r}")
    if "dtype" in spec:
        try:
            _parse_dtype(spec["dtype"])
        except ValueError as exc:
            fail("dtype", str(exc))
    if "device" in spec:
        try:
            torch.device(spec["device"])
        except (RuntimeError, TypeError) as exc:
            fail(
                "device",
                f"device must name a torch device (cpu, cuda, cuda:1), got {spec['device']!r} ({exc})",
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
