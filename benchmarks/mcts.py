"""Benchmark: the batched, prefix-reusing MCTS against a sequential one-patient-at-a-time search
with plain generation, same model, settings and seeds.

Prints trajectories (complete scored responses) per second for both and their ratio, generated
tokens per second, prefill tokens per unique prompt token, and processed tokens per second as a
fraction of the machine's bound: fp32 matmul FLOP/s measured in the same run divided by
2 x parameters. The model runs in the pipeline's own precision (``--dtype auto``: bf16 on a GPU
or an AMX CPU, else fp32); when that is bf16 the fraction of the bf16 matmul bound is printed
too, since bf16 matmuls on AMX run ~4x faster than the fp32 bound assumes. The figures are
appended to ``benchmarks/results/mcts.json`` (not with ``--no-record``).

    .venv/bin/python -m benchmarks.mcts [--patients 32] [--simulations 4] [--model PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from benchmarks.results import record
from eagrl_pipeline.llm.base_model import ensure_default_model
from eagrl_pipeline.llm.generation import load_model
from eagrl_pipeline.mcts import MCTSConfig, PatientTask, run_search
from eagrl_pipeline.mcts.hf_proposer import HFProposer, HFProposerConfig
from eagrl_pipeline.mcts.scoring import EagrlScorer
from eagrl_pipeline.prompts import FeatureMatcher, PromptConfig, build_prompts


def matmul_flops(size: int = 1024, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Sustained matmul FLOP/s of this machine in ``dtype`` (best of a few runs)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def patient_prompts(workdir: Path, n: int, max_tokens: int, tokenizer) -> tuple[list, dict, list]:
    """Real pipeline prompts: a synthetic TJH cohort built by the lineage, then serialised."""
    from benchmarks.experts import build_cohort
    from resources import Warehouse

    build_cohort(workdir, "tjh-mortality")
    visits = pd.read_parquet(workdir / "artifacts/cohort_dataset/tjh-mortality/visits.parquet")
    dictionary = Warehouse(path=str(workdir / "warehouse.duckdb")).query(
        "SELECT * FROM feature_dictionary WHERE dataset = 'tjh' ORDER BY rowid"
    )
    train = visits[visits["split"] == "train"]
    train = train[train["patient_id"].isin(train["patient_id"].unique()[:n])]
    prompts = build_prompts(
        train, dictionary, "tjh", "mortality",
        PromptConfig(feature_filter="measured", max_tokens=max_tokens),
        count_tokens=lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
    )  # fmt: skip
    tasks = [
        PatientTask(str(r.patient_id), [{"role": "system", "content": r.system},
                                        {"role": "user", "content": r.user}])
        for r in prompts.itertuples()
    ]  # fmt: skip
    labels = {str(r.patient_id): int(r.label) for r in prompts.itertuples()}
    return tasks, labels, dictionary["feature_name"].tolist()


def run(proposer: HFProposer, tasks: list, scorer, config: MCTSConfig, sequential: bool):
    start = time.perf_counter()
    if sequential:
        results = [run_search([task], proposer, scorer, config)[0] for task in tasks]
    else:
        results = run_search(tasks, proposer, scorer, config)
    seconds = time.perf_counter() - start
    complete = sum(r.stats.complete_responses for r in results)
    return seconds, complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local model folder; default SmolLM2")
    parser.add_argument("--patients", type=int, default=32, help="searched in lockstep")
    parser.add_argument("--simulations", type=int, default=4)
    parser.add_argument("--branching", type=int, default=2)
    parser.add_argument("--max-depth", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--step-tokens", type=int, default=32)
    parser.add_argument("--rollout-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--no-record", action="store_true", help="do not append to the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="eagrl_bench_mcts_"))
    model_dir = Path(args.model) if args.model else ensure_default_model(workdir / "models")
    model, tokenizer = load_model(model_dir, "cpu", args.dtype)
    tasks, labels, names = patient_prompts(workdir / "home", args.patients, args.prompt_tokens,
                                           tokenizer)  # fmt: skip
    scorer = EagrlScorer(FeatureMatcher.build(names), labels, {})
    config = MCTSConfig(
        n_simulations=args.simulations, branching=args.branching, max_depth=args.max_depth
    )
    n_params = sum(p.numel() for p in model.parameters())
    flops = matmul_flops()
    bound = flops / (2 * n_params)
    reduced = model.dtype != torch.float32  # then the model's own matmul bound is printed too
    own = matmul_flops(dtype=model.dtype) if reduced else flops
    own_bound = own / (2 * n_params)
    dtype_name = str(model.dtype).removeprefix("torch.")
    print(
        f"model {model_dir.name} ({dtype_name}): {n_params / 1e6:.1f} M params; {len(tasks)} "
        f"patients, {args.simulations} simulations, k={args.branching}, depth {args.max_depth}; "
        f"{args.threads} threads; fp32 matmul {flops / 1e9:.1f} GFLOP/s -> bound "
        f"{bound:.0f} tokens/s"
        + (f"; {dtype_name} matmul {own / 1e9:.1f} GFLOP/s -> {own_bound:.0f} tokens/s"
           if reduced else ""),
        flush=True,
    )  # fmt: skip
    rows = []
    searches: dict[str, dict[str, float]] = {}
    for name, cache, sequential in (("batched+reuse", "nodes", False), ("sequential", "off", True)):
        proposer = HFProposer(
            model, tokenizer,
            HFProposerConfig(step_max_new_tokens=args.step_tokens,
                             rollout_max_new_tokens=args.rollout_tokens, prefix_cache=cache),
        )  # fmt: skip
        seconds, complete = run(proposer, tasks, scorer, config, sequential)
        c = proposer.counters
        processed = c.prefill_tokens + c.generated_tokens
        rows.append((name, seconds, complete))
        rate = processed / seconds
        print(
            f"{name:<15} {seconds:8.1f} s  {complete / seconds:7.3f} trajectories/s  "
            f"{c.generated_tokens / seconds:7.1f} new tokens/s  prefill/unique prompt token "
            f"{c.prefill_per_unique_prompt_token:5.2f}  processed {rate:7.0f} tokens/s "
            f"({c.prefill_tokens} prefill + {c.generated_tokens} new) = {rate / bound:5.1%} of "
            f"the fp32 bound"
            + (f", {rate / own_bound:5.1%} of the {dtype_name} bound" if reduced else ""),
            flush=True,
        )  # fmt: skip
        searches[name] = {
            "seconds": round(seconds, 2),
            "trajectories": complete,
            "trajectories_per_s": round(complete / seconds, 4),
            "new_tokens_per_s": round(c.generated_tokens / seconds, 1),
            "prefill_per_unique_prompt_token": round(c.prefill_per_unique_prompt_token, 3),
            "prefill_tokens": c.prefill_tokens,
            "generated_tokens": c.generated_tokens,
            "processed_tokens_per_s": round(rate, 1),
            "percent_of_fp32_bound": round(100 * rate / bound, 2),
            **(
                {f"percent_of_{dtype_name}_bound": round(100 * rate / own_bound, 2)}
                if reduced
                else {}
            ),
        }
    (_, fast_s, fast_n), (_, slow_s, slow_n) = rows
    speedup = (fast_n / fast_s) / (slow_n / slow_s)
    print(f"speed-up (trajectories/s): {speedup:.2f}x")
    if not args.no_record:
        settings = ("patients", "simulations", "branching", "max_depth", "prompt_tokens",
                    "step_tokens", "rollout_tokens", "threads", "dtype")  # fmt: skip
        own_figures = {  # the model's own matmul bound, where it is not fp32
            f"{dtype_name}_matmul_gflops": round(own / 1e9, 1),
            f"{dtype_name}_bound_tokens_per_s": round(own_bound),
        }
        record(
            "mcts",
            {
                "model": model_dir.name,
                "model_dtype": dtype_name,
                "n_params": n_params,
                "patients_searched": len(tasks),
                **{k: getattr(args, k) for k in settings},
                "fp32_matmul_gflops": round(flops / 1e9, 1),
                "fp32_bound_tokens_per_s": round(bound),
                **(own_figures if reduced else {}),
                "searches": searches,
                "speedup": round(speedup, 2),
            },
        )


if __name__ == "__main__":
    main()
