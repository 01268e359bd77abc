"""Benchmark: copy variants per second from SmolLM2-135M-Instruct at 24 new tokens.

    .venv/bin/python bench/generator.py                          # CPU, batch 1..512
    .venv/bin/python bench/generator.py --device cuda --batches 64,256,1024,4096 --compile

Each batch is ``B / n`` real copy requests (product + segment prompts from the market, ~135
prompt tokens) × ``n`` samples (8 by default, the generator's usual request size), sampled with
:func:`copyloop.generator.generate.sample` (one prefill per prompt, KV cache repeated for its
samples), exactly 24 new tokens per row (early stopping off, so every batch does the same work).
Reports variants/s, generated tokens/s and peak memory (CPU: peak RSS via ``VmHWM``, reset per
batch size; CUDA: ``torch.cuda.max_memory_allocated``), medians over ``--repeats`` runs after a
warm-up. On CUDA the model runs in bf16; ``--compile`` adds a static KV cache and
``torch.compile(mode="reduce-overhead")``.

Goals: >= 5 variants/s on a 2-core CPU; >= 5,000 variants/s on an H100.

``--peer-hf`` times Hugging Face ``generate`` (sampling, same temperature / top-p, exactly 24 new
tokens via ``min_new_tokens``, ``num_return_sequences`` = samples per request) on the same
prompts in the same run and reports the ratio.

On a machine without the market (a lent GPU box): render the prompts here with
``--prompts-out FILE`` and pass ``--prompts FILE`` there. When the weights cannot travel,
``--random-weights`` builds the model from ``--model``'s config.json and tokenizer with random
weights: the same architecture and, with every row forced to 24 tokens, the same work; the
result files say so.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, git_commit, reset_peak, ru_maxrss_bytes, status_kib


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batches", default="1,4,16,64,256,512", help="batch sizes (rows)")
    ap.add_argument("--n", type=int, default=8, help="samples per request (prompt)")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    ap.add_argument("--compile", action="store_true", help="CUDA: static cache + torch.compile")
    ap.add_argument("--model", default=None, help="model path (default embedded SmolLM2)")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--peer-hf", action="store_true", help="also time HF generate (the peer)")
    ap.add_argument("--prompts", default=None, help="JSON list of rendered prompts to use")
    ap.add_argument(
        "--prompts-out", default=None, help="write the rendered prompts (JSON) for --batches; exit"
    )
    ap.add_argument(
        "--sampler",
        default="auto",
        choices=["auto", "sort", "rejection"],
        help="top-p sampler (SamplingConfig.sampler; auto: rejection on CUDA, sort on CPU)",
    )
    ap.add_argument(
        "--random-weights",
        action="store_true",
        help="--model is a folder with config.json + tokenizer: random weights, same architecture",
    )
    args = ap.parse_args(argv)
    batches = [int(x) for x in args.batches.split(",")]
    most_requests = max(max(b // min(args.n, b), 1) for b in batches)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from copyloop.generator.generate import SamplingConfig, sample

    if args.prompts_out:
        rendered = market_prompts(most_requests)
        Path(args.prompts_out).write_text(json.dumps(rendered))
        print(f"wrote {len(rendered)} prompts to {args.prompts_out}")
        return 0
    if args.prompts:
        all_prompts = json.loads(Path(args.prompts).read_text())
        if len(all_prompts) < most_requests:
            raise SystemExit(
                f"{args.prompts} holds {len(all_prompts)} prompts; --batches needs "
                f"{most_requests} — re-render with --prompts-out"
            )
    else:
        all_prompts = market_prompts(most_requests)
    lm = random_model(args.model, args.device) if args.random_weights else None
    if lm is None:
        from copyloop.generator.models import load_model

        lm = load_model(args.model, device=args.device)
    cuda = lm.device.type == "cuda"
    if args.compile:
        if not cuda:
            print("--compile is for CUDA (CUDA graphs); ignored on CPU", file=sys.stderr)
        else:
            lm.model.forward = torch.compile(lm.model.forward, mode="reduce-overhead")
    cfg = SamplingConfig(max_new_tokens=args.new_tokens, ignore_eos=True, sampler=args.sampler)
    sampler = args.sampler if args.sampler != "auto" else ("rejection" if cuda else "sort")
    rows = []
    for b in batches:
        n = min(args.n, b)
        n_req = max(b // n, 1)
        prompts = all_prompts[:n_req]
        static = bool(args.compile and cuda)

        def run(seed: int, prompts: list[str] = prompts, n: int = n, static: bool = static) -> int:
            s = sample(lm, prompts, n, config=cfg, seed=seed, static_cache=static)
            return int(s.completion_mask.sum())

        run(0)  # warm-up (allocator, kernels, compile)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak()
        times, toks = [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            toks.append(run(r + 1))
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        mem = (
            torch.cuda.max_memory_allocated() / 2**20
            if cuda
            else (status_kib("VmHWM") or ru_maxrss_bytes() // 1024) / 1024
        )
        row = {
            "batch": n_req * n,
            "requests": n_req,
            "samples_per_request": n,
            "seconds_median": med,
            "seconds": times,
            "variants_per_s": n_req * n / med,
            "tokens_per_s": statistics.median(toks) / med,
            "peak_mem_mib": mem,
            "prompt_tokens_max": int(
                max(len(lm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
            ),
        }
        rows.append(row)
        print(
            f"batch {row['batch']:>5} ({n_req} req × {n}): {row['variants_per_s']:9.1f} variants/s "
            f"{row['tokens_per_s']:10.0f} tok/s  {med:7.2f} s  peak {mem:8.0f} MiB",
            flush=True,
        )
        if args.peer_hf:
            hf = time_hf_generate(lm, prompts, n, cfg, args.repeats)
            row["hf_variants_per_s"] = n_req * n / hf
            row["hf_seconds_median"] = hf
            row["ratio_vs_hf"] = row["variants_per_s"] / row["hf_variants_per_s"]
            print(
                f"      HF generate: {row['hf_variants_per_s']:9.1f} variants/s  "
                f"({row['ratio_vs_hf']:.2f}x)",
                flush=True,
            )
    best = max(r["variants_per_s"] for r in rows)
    goal = 5000.0 if cuda else 5.0
    info = {
        "bench": "generator",
        "command": "python bench/generator.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "device": torch.cuda.get_device_name() if cuda else cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "sampler": sampler,
        "load_average_at_end": __import__("os").getloadavg(),
        "cpus": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "model": f"{lm.name}@{lm.version}",
        "dtype": str(lm.dtype),
        "new_tokens": args.new_tokens,
        "compile": bool(args.compile and cuda),
        "weights": (
            "random init of the model's architecture (config.json + tokenizer only; the "
            "weights could not travel to this machine): same work per row at fixed length"
            if args.random_weights
            else "the model's own"
        ),
        "peer": "HF generate" if args.peer_hf else None,
        "rows": rows,
        "best_variants_per_s": best,
        "goal_variants_per_s": goal,
        "goal_met": best >= goal,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"generator_{'cuda' if cuda else 'cpu'}{args.tag}"
    (out / f"{stem}.json").write_text(json.dumps(info, indent=2))
    md = [
        f"# bench/generator ({info['device']}, {info['model']}, {info['dtype']}, "
        f"{args.new_tokens} new tokens)",
        "",
        f"`{info['command']}` · {info['date']} · commit {info['commit']} · torch "
        f"{info['torch']} ({info['torch_threads']} threads) · transformers {info['transformers']}"
        f" · load average at the end {info['load_average_at_end'][0]:.1f} on "
        f"{info['cpus']} CPUs (shared machine: other jobs were running)",
        "",
        f"Weights: {info['weights']}.",
        "",
        "| batch | requests × samples | variants/s | tokens/s | median s | peak mem MiB"
        + (" | HF generate variants/s | ratio |" if args.peer_hf else " |"),
        "|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.peer_hf else ""),
    ]
    for r in rows:
        md.append(
            f"| {r['batch']} | {r['requests']} × {r['samples_per_request']} | "
            f"{r['variants_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['seconds_median']:.2f} | "
            f"{r['peak_mem_mib']:.0f} |"
            + (f" {r['hf_variants_per_s']:.1f} | {r['ratio_vs_hf']:.2f}× |" if args.peer_hf else "")
        )
    md += [
        "",
        f"Best {best:.1f} variants/s; goal {goal:g}/s: {'PASS' if best >= goal else 'FAIL'}.",
    ]
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print(f"best {best:.1f} variants/s (goal {goal:g}): {'PASS' if best >= goal else 'FAIL'}")
    print(f"wrote {out / stem}.json and .md")
    return 0


def market_prompts(n_requests: int) -> list[str]:
    """Rendered copy prompts of the default market: request i = (campaign i, segment i mod S)."""
    from copyloop.envs import Market
    from copyloop.generator.models import default_tokenizer
    from copyloop.generator.prompts import CopyRequest, build_messages, render_prompt

    market = Market.get()
    tok = default_tokenizer()
    cat, pop = market.catalog, market.population
    out = []
    for i in range(n_requests):
        req = CopyRequest(i % cat.n_campaigns, i % pop.n_segments)
        msgs = build_messages(
            cat.products[req.campaign], pop.config.segments[req.segment], req.style
        )
        out.append(render_prompt(tok, msgs))
    return out


def random_model(folder: str | None, device: str) -> object:
    """The architecture in ``folder``/config.json with seeded random weights, in bf16 on CUDA."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from copyloop.generator.models import LoadedModel, pick_device, pick_dtype

    if folder is None:
        raise SystemExit("--random-weights needs --model FOLDER (config.json + tokenizer files)")
    dev = pick_device(device)
    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(cfg, dtype=pick_dtype(dev)).to(dev).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    meta = Path(folder) / "copyloop_model.json"
    name = json.loads(meta.read_text()).get("name", "model") if meta.is_file() else "model"
    return LoadedModel(model, tok, f"{name} (random weights)", "base", None, str(folder))


def time_hf_generate(lm: object, prompts: list[str], n: int, cfg: object, repeats: int) -> float:
    """Median seconds of HF ``generate`` drawing ``n`` samples of each prompt, exactly
    ``cfg.max_new_tokens`` new tokens per row, same temperature and top-p (after a warm-up)."""
    import torch

    tok, model = lm.tokenizer, lm.model  # type: ignore[attr-defined]
    enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(lm.device) for k, v in enc.items()}  # type: ignore[attr-defined]
    kw = {
        "do_sample": True,
        "temperature": cfg.temperature,  # type: ignore[attr-defined]
        "top_p": cfg.top_p,  # type: ignore[attr-defined]
        "top_k": 0,
        "max_new_tokens": cfg.max_new_tokens,  # type: ignore[attr-defined]
        "min_new_tokens": cfg.max_new_tokens,  # type: ignore[attr-defined]
        "num_return_sequences": n,
        "pad_token_id": tok.pad_token_id,
    }
    cuda = lm.device.type == "cuda"  # type: ignore[attr-defined]
    times = []
    with torch.no_grad():
        for r in range(repeats + 1):
            torch.manual_seed(r)
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate(**enc, **kw)
            if cuda:
                torch.cuda.synchronize()
            if r:
                times.append(time.perf_counter() - t0)
            assert out.shape[1] - enc["input_ids"].shape[1] == cfg.max_new_tokens  # type: ignore[attr-defined]
    return statistics.median(times)


if __name__ == "__main__":
    raise SystemExit(main())
