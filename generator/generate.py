"""Batched, seeded sampling from a causal LM, and conditioned copy generation for a market.

:func:`sample` is a compact sampling loop over the model's KV cache: prompts are left padded and
prefilled once each, their caches are repeated for the ``n`` samples of each prompt (so ``n``
variants of one request cost one prefill), then tokens are drawn with a local
``torch.Generator`` (the global RNG is never touched) until every row has stopped. On CUDA the
model runs in bf16; an optional static cache + ``torch.compile`` path is there for large batches.

:class:`CopyGenerator` turns :class:`~copyloop.generator.prompts.CopyRequest` s into filtered
variants that carry their origin (model, version, prompt, seed) and can be written as a
:class:`~copyloop.contract.VariantsTable`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from copyloop.contract import VariantsTable
from copyloop.generator.filters import CopyFilter, FilterConfig, FilterReport, clean, name_words
from copyloop.generator.models import LoadedModel
from copyloop.generator.prompts import CopyRequest, build_messages, render_prompt

SAMPLERS = ("auto", "sort", "rejection")


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample.

    Attributes:
        max_new_tokens: most tokens per completion (a line of ad copy fits in ~24).
        temperature: softmax temperature (> 0).
        top_p: nucleus sampling mass (1 = off).
        batch_size: most sequences decoded together.
        stop_at_newline: a token containing a newline ends a completion (the ad is one line).
        ignore_eos: never stop early: every row gets exactly ``max_new_tokens`` (benchmarks).
        sampler: how a token is drawn from the nucleus. ``"sort"`` sorts each row's vocabulary
            (the textbook top-p filter); ``"rejection"`` draws from the whole distribution and
            rejects draws outside the nucleus, raising a pivot each time (no sort: a few passes
            over the logits, the fast path on a GPU at large batches); both draw from the same
            distribution, not the same tokens for a seed. ``"auto"`` (default): rejection on
            CUDA, sort elsewhere (so CPU results stay token-for-token reproducible).
    """

    max_new_tokens: int = 24
    temperature: float = 0.9
    top_p: float = 0.95
    batch_size: int = 64
    stop_at_newline: bool = True
    ignore_eos: bool = False
    sampler: str = "auto"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {self.batch_size}")


@dataclass
class Samples:
    """Completions of a batch of prompts (``P`` prompts × ``n`` samples = ``B`` rows).

    Attributes:
        prompt_ids: left-padded prompt tokens, (P, L).
        prompt_mask: 1 on real prompt tokens, (P, L).
        row_prompt: prompt index of each row, (B,).
        completion_ids: sampled tokens, (B, T), pad after the stop token.
        completion_mask: 1 on real completion tokens (the stop token included), (B, T).
        texts: decoded completions (special tokens dropped), length B.
    """

    prompt_ids: Any
    prompt_mask: Any
    row_prompt: Any
    completion_ids: Any
    completion_mask: Any
    texts: list[str]


def stop_token_ids(tokenizer: Any, newline: bool = True) -> list[int]:
    """End-of-sequence ids, plus every token whose text contains a newline (memoised)."""
    cached = getattr(tokenizer, "_copyloop_stop", None)
    if cached is not None and cached[0] == newline:
        return list(cached[1])
    ids = {int(tokenizer.eos_token_id)}
    if newline:
        pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        ids.update(i for i, p in enumerate(pieces) if "\n" in p)
    out = sorted(ids)
    tokenizer._copyloop_stop = (newline, out)
    return out


def cache_keyword(model: Any) -> str:
    """The keyword a causal LM's ``forward`` takes its KV cache by: ``cache`` in transformers
    releases that renamed it (there ``past_key_values`` still works but warns), else
    ``past_key_values``."""
    forward = getattr(model, "_orig_mod", model).forward  # through a torch.compile wrapper
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The KV cache a forward returned, under either name (see :func:`cache_keyword`)."""
    cache = out.get("cache")  # not out.past_key_values: in those releases reading it warns
    return cache if cache is not None else out.past_key_values


def _filter_top_p(logits: Any, top_p: float) -> Any:
    import torch

    if top_p >= 1.0:
        return logits
    sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    cum = probs.cumsum(-1)
    drop = cum - probs > top_p  # keep the smallest prefix whose mass reaches top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)


def _draw_rejection(logits: Any, top_p: float, gen: Any, max_rounds: int = 64) -> Any:
    """One token per row from the top-p nucleus of ``softmax(logits)``, without sorting.

    A token is in the nucleus when the mass of the tokens strictly more probable than it is at
    most ``top_p`` (the sort filter's rule, up to ties). Each round draws every pending row's
    token from its distribution restricted to tokens above the row's pivot (an exponential race:
    ``argmax p / E``, ``E ~ Exp(1)``), accepts it when it is in the nucleus, and otherwise raises
    the pivot to its probability: every token no more probable than a rejected one is outside
    the nucleus, so the proposal always contains the nucleus and the accepted draw is an exact
    draw from the renormalised nucleus (rejection sampling). The first round accepts with
    probability >= ``top_p``; rows still pending after ``max_rounds`` fall back to the sort filter.
    """
    import torch

    probs = torch.softmax(logits, dim=-1)
    b = probs.shape[0]
    out = torch.empty(b, dtype=torch.long, device=probs.device)
    rows = torch.arange(b, device=probs.device)
    pivot = torch.zeros((b, 1), dtype=probs.dtype, device=probs.device)
    p = probs
    for _ in range(max_rounds):
        prop = torch.where(p > pivot, p, 0.0)
        race = torch.empty_like(prop).exponential_(generator=gen)
        tok = torch.div(prop, race, out=race).argmax(-1)
        p_tok = p.gather(1, tok[:, None])
        above = torch.where(p > p_tok, p, 0.0).sum(-1)
        ok = above <= top_p
        out[rows[ok]] = tok[ok]
        keep = ~ok
        if not bool(keep.any()):
            return out
        rows, pivot, p = rows[keep], p_tok[keep], p[keep]
    rest = torch.softmax(_filter_top_p(logits[rows], top_p), dim=-1)
    out[rows] = torch.multinomial(rest, 1, generator=gen).squeeze(1)
    return out


def _draw(logits: Any, cfg: SamplingConfig, gen: Any) -> Any:
    """One token per row (temperature, then top-p with the configured sampler)."""
    import torch

    scaled = logits / cfg.temperature
    sampler = cfg.sampler
    if sampler == "auto":
        sampler = "rejection" if scaled.device.type == "cuda" else "sort"
    if sampler == "rejection" and cfg.top_p < 1.0:
        return _draw_rejection(scaled, cfg.top_p, gen)
    probs = torch.softmax(_filter_top_p(scaled, cfg.top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)


def sample(
    lm: LoadedModel,
    prompts: Sequence[str],
    n: int = 1,
    *,
    config: SamplingConfig | None = None,
    seed: int = 0,
    static_cache: bool = False,
) -> Samples:
    """Draw ``n`` completions of each prompt in one batch (``len(prompts) · n`` rows).

    Args:
        lm: the model.
        prompts: rendered prompt texts (chat template applied).
        n: completions per prompt.
        config: sampling settings (``batch_size`` is not used here: this is one batch).
        seed: seed of the local torch generator; the same seed, prompts and settings give the
            same completions on the same device.
        static_cache: decode with a preallocated static KV cache (fixed shapes, so a
            ``torch.compile``-d forward with CUDA graphs can replay); prompts are then repeated
            ``n`` times instead of sharing one prefill.
    """
    import torch

    cfg = config or SamplingConfig()
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    if not prompts:
        raise ValueError("`prompts` is empty — give at least one prompt")
    tok, model = lm.tokenizer, lm.model
    dev = lm.device
    enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    ids = enc["input_ids"].to(dev)
    attn = enc["attention_mask"].to(dev)
    if static_cache and n > 1:
        ids, attn, n = ids.repeat_interleave(n, 0), attn.repeat_interleave(n, 0), 1
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    stops = torch.tensor(
        [] if cfg.ignore_eos else stop_token_ids(tok, cfg.stop_at_newline),
        dtype=torch.long,
        device=dev,
    )
    pad = int(tok.pad_token_id)
    b = ids.shape[0] * n
    steps = cfg.max_new_tokens
    # no_grad, not inference_mode: the sampled tokens are later inputs of a training forward.
    with torch.no_grad():
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        cache: Any = None
        if static_cache:
            from transformers import StaticCache

            cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + steps)
        cache_kw = cache_keyword(model)
        # A torch.compile-d forward (CUDA graphs) runs the decode steps only: the prefill runs
        # the original forward, so the static cache's tensors are created outside any graph.
        forward = getattr(model.forward, "_torchdynamo_orig_callable", None)
        compiled = forward is not None
        prefill: Any = forward if forward is not None else model
        out = prefill(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
        )
        past = returned_cache(out)
        logits = out.logits[:, -1, :].float()
        if n > 1:
            past.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, 0)
        attn_all = torch.cat(
            [attn.repeat_interleave(n, 0), torch.zeros(b, steps, dtype=attn.dtype, device=dev)], 1
        )
        next_pos = pos[:, -1:].repeat_interleave(n, 0) + 1
        comp = torch.full((b, steps), pad, dtype=torch.long, device=dev)
        cmask = torch.zeros((b, steps), dtype=torch.long, device=dev)
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        width = ids.shape[1]
        for t in range(steps):
            nxt = _draw(logits, cfg, gen)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            comp[:, t] = nxt
            cmask[:, t] = (~done).long()
            done = done | torch.isin(nxt, stops)
            if bool(done.all()) or t == steps - 1:
                break
            attn_all[:, width + t] = 1
            if compiled:
                torch.compiler.cudagraph_mark_step_begin()
            out = model(
                input_ids=nxt[:, None],
                # a static cache keeps every shape fixed (one graph); the future is masked off
                attention_mask=attn_all if static_cache else attn_all[:, : width + t + 1],
                position_ids=next_pos,
                use_cache=True,
                **{cache_kw: past},
            )
            past = returned_cache(out)
            logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1
    used = int(cmask.sum(0).nonzero().max().item()) + 1 if bool(cmask.any()) else 1
    comp, cmask = comp[:, :used], cmask[:, :used]
    texts = tok.batch_decode(comp.masked_fill(cmask == 0, pad), skip_special_tokens=True)
    return Samples(
        prompt_ids=ids,
        prompt_mask=attn,
        row_prompt=torch.arange(ids.shape[0], device=dev).repeat_interleave(n),
        completion_ids=comp,
        completion_mask=cmask,
        texts=list(texts),
    )


@dataclass
class Variant:
    """One generated line of copy and where it came from.

    Attributes:
        text: the cleaned ad line.
        raw: the model's completion before cleaning.
        campaign: campaign index; segment: target segment index.
        prompt: the rendered prompt it was sampled from.
        seed: seed of the batch it was sampled in; sample: its row in that batch.
        model, version: the generating model and its version.
        rejected: why the filters rejected it (None = kept).
    """

    text: str
    raw: str
    campaign: int
    segment: int
    prompt: str
    seed: int
    sample: int
    model: str
    version: str
    rejected: str | None = None


@dataclass
class Generation:
    """The variants of a :meth:`CopyGenerator.generate` call (kept and rejected)."""

    variants: list[Variant]
    report: FilterReport = field(default_factory=FilterReport)
    embeddings: npt.NDArray[np.float32] | None = None  # (len(variants), e), for kept ones

    @property
    def kept(self) -> list[Variant]:
        return [v for v in self.variants if v.rejected is None]

    def texts_for(self, campaign: int, segment: int, *, kept_only: bool = True) -> list[str]:
        return [
            v.text
            for v in self.variants
            if v.campaign == campaign
            and v.segment == segment
            and (v.rejected is None or not kept_only)
        ]


class CopyGenerator:
    """Writes copy variants for campaigns of a market, conditioned on the target segment.

    Args:
        lm: the loaded model.
        market: the market whose catalog (real products) and population (segments) prompts use.
        sampling: sampling settings.
        filters: post-filter rules.
        embed: unit-norm text embeddings for near-duplicate removal (default packaged MiniLM).

    Example:
        >>> gen = CopyGenerator(load_model(), Market.get())  # doctest: +SKIP
        >>> out = gen.generate([CopyRequest(campaign=0, segment=1)], n=8, seed=0)  # doctest: +SKIP
        >>> [v.text for v in out.kept][:2]  # doctest: +SKIP
    """

    def __init__(
        self,
        lm: LoadedModel,
        market: Any,
        *,
        sampling: SamplingConfig | None = None,
        filters: FilterConfig | None = None,
        embed: Callable[[list[str]], npt.NDArray[np.float32]] | None = None,
    ) -> None:
        self.lm = lm
        self.market = market
        self.sampling = sampling or SamplingConfig()
        self.filter = CopyFilter(filters, embed=embed)
        self._embed = embed

    def prompt(self, req: CopyRequest) -> str:
        cat, pop = self.market.catalog, self.market.population
        if not 0 <= req.campaign < cat.n_campaigns:
            raise ValueError(f"`campaign` must be in [0, {cat.n_campaigns}), got {req.campaign}")
        if not 0 <= req.segment < pop.n_segments:
            raise ValueError(f"`segment` must be in [0, {pop.n_segments}), got {req.segment}")
        msgs = build_messages(
            cat.products[req.campaign], pop.config.segments[req.segment], req.style
        )
        return render_prompt(self.lm.tokenizer, msgs)

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if self._embed is None:
            from copyloop.generator.reward import session_encoder

            self._embed = session_encoder().encode
        return self._embed(texts)

    def generate(
        self,
        requests: Sequence[CopyRequest],
        n: int,
        *,
        seed: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> Generation:
        """``n`` samples per request, cleaned and filtered (per request: per-line rules, then
        near-duplicates). Batches hold ``max(1, batch_size // n)`` requests; batch ``j`` is
        sampled with seed ``seed + j``.

        Args:
            requests: what to write.
            n: samples per request (kept variants may be fewer: see ``Variant.rejected``).
            seed: base seed.
            progress: called with the number of requests done after each batch.
        """
        if n < 1:
            raise ValueError(f"`n` must be >= 1, got {n}")
        per = max(1, self.sampling.batch_size // n)
        variants: list[Variant] = []
        prompts = [self.prompt(r) for r in requests]
        for j, start in enumerate(range(0, len(requests), per)):
            chunk = list(range(start, min(start + per, len(requests))))
            s = sample(self.lm, [prompts[i] for i in chunk], n, config=self.sampling, seed=seed + j)
            for row, raw in enumerate(s.texts):
                i = chunk[row // n]
                r = requests[i]
                variants.append(
                    Variant(
                        text=clean(raw),
                        raw=raw,
                        campaign=r.campaign,
                        segment=r.segment,
                        prompt=prompts[i],
                        seed=seed + j,
                        sample=row,
                        model=self.lm.name,
                        version=self.lm.version,
                    )
                )
            if progress is not None:
                progress(chunk[-1] + 1)
        return self._filter(variants, requests)

    def _filter(self, variants: list[Variant], requests: Sequence[CopyRequest]) -> Generation:
        cat = self.market.catalog
        report = FilterReport()
        texts = [v.text for v in variants]
        uniq = sorted({t for t in texts if t})
        emb_of = dict(zip(uniq, self.embed(uniq), strict=True)) if uniq else {}
        dim = next(iter(emb_of.values())).shape[0] if emb_of else 384
        emb = np.stack([emb_of.get(t, np.zeros(dim, np.float32)) for t in texts]).astype(np.float32)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, v in enumerate(variants):
            groups.setdefault((v.campaign, v.segment), []).append(i)
        for (c, _), idx in groups.items():
            reasons = self.filter.apply(
                [variants[i].text for i in idx],
                names=name_words(cat.products[c]),
                embeddings=emb[idx],
            )
            for i, why in zip(idx, reasons, strict=True):
                variants[i].rejected = why
            report.add(reasons)
        return Generation(variants=variants, report=report, embeddings=emb)

    def variants_table(self, gen: Generation, *, include_rejected: bool = False) -> VariantsTable:
        """The kept variants as a VariantsTable (grouped by campaign), with embeddings; origin
        ``generator:<model>@<version>``, and model, version, prompt, seed, sample, target
        segment in ``attributes``."""
        cat, pop = self.market.catalog, self.market.population
        rows = []
        order = sorted(
            (i for i, v in enumerate(gen.variants) if include_rejected or v.rejected is None),
            key=lambda i: (gen.variants[i].campaign, gen.variants[i].segment, i),
        )
        for i in order:
            v = gen.variants[i]
            cid = cat.campaign_ids[v.campaign]
            rows.append(
                {
                    "variant_id": f"{cid}-{v.model}@{v.version}-s{v.segment}-{v.seed}-{v.sample}",
                    "campaign_id": cid,
                    "text": v.text,
                    "attributes": json.dumps(
                        {
                            "model": v.model,
                            "version": v.version,
                            "prompt": v.prompt,
                            "seed": v.seed,
                            "sample": v.sample,
                            "segment": pop.segment_names[v.segment],
                            "rejected": v.rejected,
                        },
                        sort_keys=True,
                    ),
                    "embedding": None if gen.embeddings is None else gen.embeddings[i],
                    "origin": f"generator:{v.model}@{v.version}",
                }
            )
        return VariantsTable.from_records(rows)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n: unique word n-grams / all word n-grams over ``texts`` (0 when none)."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        w = t.lower().split()
        grams.extend(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0
