"""The real ad corpus: gembench's CA_Prod ``products.tsv`` (2,215 shopping ads, Apache-2.0).

The file ships inside the PyPI package ``gembench`` (installed ``--no-deps`` by
``scripts/setup.sh``); it is located on disk, never imported and never committed here.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from copyloop.envs.users import CATEGORIES

_REL = Path("benchmarking/dataset/CA_Prod/src/dataset/products.tsv")
CORPUS_ENV = "COPYLOOP_CORPUS"
"""Environment variable that points at another ``products.tsv`` with the same columns."""


class AssetMissingError(FileNotFoundError):
    """An offline asset (corpus, encoder, LM) is not installed."""


def corpus_path() -> Path:
    """Path of ``products.tsv``: ``$COPYLOOP_CORPUS`` if set, else inside the gembench package."""
    override = os.environ.get(CORPUS_ENV)
    if override:
        p = Path(override)
        if not p.is_file():
            raise AssetMissingError(f"${CORPUS_ENV} points at {p}, which does not exist")
        return p
    spec = importlib.util.find_spec("GemBench")
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(
            "the ad corpus is not installed: copyloop reads gembench's CA_Prod products.tsv — run "
            "`bash scripts/setup.sh`, or `pip install --no-deps gembench`"
        )
    p = Path(next(iter(spec.submodule_search_locations))) / _REL
    if not p.is_file():
        raise AssetMissingError(f"gembench is installed but {p} is missing — reinstall gembench")
    return p


@dataclass(frozen=True)
class Product:
    """One real shopping ad of the corpus."""

    product_id: str
    title: str
    description: str
    brand: str
    website: str
    category: int  # index into CATEGORIES

    @property
    def category_name(self) -> str:
        return CATEGORIES[self.category]


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[Product, ...]:
    table = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types={"product_id": pa.string(), "cluster_category": pa.float64()},
            strings_can_be_null=True,
        ),
    )
    need = ["product_id", "ad_title", "ad_description", "brand", "website", "cluster_category"]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise ValueError(f"corpus file {path} lacks column(s) {missing}")
    rows = table.select(need).to_pylist()
    out = []
    for r in rows:
        title = (r["ad_title"] or "").strip()
        cat = r["cluster_category"]
        if not title or cat is None or not 0 <= int(cat) < len(CATEGORIES):
            continue  # unusable ad: no title or no category
        out.append(
            Product(
                product_id=str(r["product_id"]),
                title=title,
                description=(r["ad_description"] or "").strip(),
                brand=(r["brand"] or "").strip(),
                website=(r["website"] or "").strip(),
                category=int(cat),
            )
        )
    return tuple(out)


def load_products(path: str | os.PathLike[str] | None = None) -> tuple[Product, ...]:
    """All usable products of the corpus (rows without a title or category are skipped)."""
    return _load(str(path) if path is not None else str(corpus_path()))
