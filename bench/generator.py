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
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from copyloop.envs import Market
    from copyloop.generator.generate import CopyGenerator, SamplingConfig, sample
    from copyloop.generator.models import load_model
    from copyloop.generator.prompts import CopyRequest

    lm = load_model(args.model, device=args.device)
    cuda = lm.device.type == "cuda"
    if args.compile:
        if not cuda:
            print("--compile is for CUDA (CUDA graphs); ignored on CPU", file=sys.stderr)
        else:
            lm.model.forward = torch.compile(lm.model.forward, mode="reduce-overhead")
    market = Market.get()
    gen = CopyGenerator(lm, market)
    n_seg = market.population.n_segments
    cfg = SamplingConfig(max_new_tokens=args.new_tokens, ignore_eos=True)
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        n = min(args.n, b)
        n_req = max(b // n, 1)
        reqs = [CopyRequest(i % market.catalog.n_campaigns, i % n_seg) for i in range(n_req)]
        prompts = [gen.prompt(r) for r in reqs]
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
        "load_average_at_end": __import__("os").getloadavg(),
        "cpus": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "model": f"{lm.name}@{lm.version}",
        "dtype": str(lm.dtype),
        "new_tokens": args.new_tokens,
        "compile": bool(args.compile and cuda),
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
        "| batch | requests × samples | variants/s | tokens/s | median s | peak mem MiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['batch']} | {r['requests']} × {r['samples_per_request']} | "
            f"{r['variants_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['seconds_median']:.2f} | "
            f"{r['peak_mem_mib']:.0f} |"
        )
    md += [
        "",
        f"Best {best:.1f} variants/s; goal {goal:g}/s: {'PASS' if best >= goal else 'FAIL'}.",
    ]
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print(f"best {best:.1f} variants/s (goal {goal:g}): {'PASS' if best >= goal else 'FAIL'}")
    print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
