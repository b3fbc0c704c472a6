"""GPU check, part 2: decode throughput of every sampling path, at 64 and 256 rows per call, on the model of part 1:

- `engine`: popo's HF engine as configured by default (`decode="loop"`: its own loop, finished rows dropped);
- `engine-static`: popo's HF engine with `decode="generate-static"` (`generate` with a static KV cache, compiled
  by `transformers` on CUDA, and popo's seeded draw, compiled, as its logits processor);
- `generate-static` and `generate-dynamic`: a bare `generate` with `transformers`' own sampler and a static
  (compiled on CUDA) or its default dynamic KV cache.

Both engine paths draw popo's per-row seeded samples and record their log-probs; the bare `generate` calls
do neither. The default path on CUDA follows this part's latest committed result (docs/gpu-check.md).

Every path gets the same rows: `rows / group` testbed prompts, each repeated `group` times (as in training),
sampling at temperature 1, top-p 1, no top-k, up to `--new-tokens` tokens. A randomly initialised model
almost never samples end-of-sequence, so every row decodes the full length and the paths do equal work.
Per (rows, path): one untimed call of the same shape (static caches are allocated and compiled then), `--repeats`
timed calls; the table gives the median. Tokens count up to and including the first end-of-sequence.

    python3 benchmarks/gpu/decode.py --model DIR --out OUT/decode          # CUDA, bf16
    python3 benchmarks/gpu/decode.py --model DIR --out OUT/decode --cpu    # tiny sizes, fp32, CPU
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
sys.path.append(str(Path(__file__).resolve().parents[2] / "src"))  # after site-packages: an installed popo wins
import common  # noqa: E402
import part_args  # noqa: E402

PATHS = ("engine", "engine-static", "generate-static", "generate-dynamic")


def completion_tokens(completion, eos_id: int) -> int:
    """Tokens of [N, C] completions up to and including each row's first end-of-sequence."""
    is_eos = (completion == eos_id).long()  # [N, C]
    return int(((is_eos.cumsum(1) - is_eos) == 0).sum())


class Decoder:
    """The paths on one model; `call(path, rows, seed)` returns the generated token count."""

    def __init__(self, model_dir: Path, device: str, new_tokens: int, group: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from popo.rollout import HFEngine, SamplingParams
        from popo.testbed.addition import AdditionTask

        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.device, self.group, self.new_tokens = device, group, new_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        self.engines = {"engine": HFEngine(self.model, self.tokenizer, max_batch_rollouts=10**6),
                        "engine-static": HFEngine(self.model, self.tokenizer, max_batch_rollouts=10**6,
                                                  decode="generate-static")}
        self.sampling = SamplingParams(new_tokens, 1.0, 1.0)
        self.problems = [ex.problem for ex in AdditionTask(digits=3, test_size=100).train_examples(1024, seed=0)]

    def call(self, path: str, rows: int, seed: int) -> int:
        import torch

        prompts = self.problems[: rows // self.group]
        if path in self.engines:
            return int(self.engines[path].generate(prompts, self.group, self.sampling, seed=seed).lengths.sum())
        batch = self.tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        ids = batch["input_ids"].repeat_interleave(self.group, dim=0).to(self.device)  # [N, P]
        mask = batch["attention_mask"].repeat_interleave(self.group, dim=0).to(self.device)  # [N, P]
        cache = {"cache_implementation": "static"} if path == "generate-static" else {}
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.new_tokens,
                                      do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id, **cache)
        return completion_tokens(out[:, ids.shape[1]:], self.tokenizer.eos_token_id)

    def measure(self, path: str, rows: int, repeats: int) -> dict:
        import torch

        cuda = self.device == "cuda"
        self.call(path, rows, seed=0)  # same shapes as the timed calls
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        walls, tokens = [], []
        for r in range(repeats):
            begin = time.perf_counter()
            tokens.append(self.call(path, rows, seed=r + 1))
            if cuda:
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - begin)
        wall = statistics.median(walls)
        return {"rows": rows, "path": path, "tokens": statistics.median(tokens), "wall_s": wall,
                "walls_s": [round(w, 4) for w in walls], "tokens_per_s": statistics.median(tokens) / wall,
                "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# GPU check, part 2: decode throughput on {report['device']}", "",
             f"Command: `{report['command']}`", "",
             f"Model: {s['params'] / 1e6:.3g} M parameters, {s['dtype']}; {s['group']} rollouts per prompt, up to "
             f"{s['new_tokens']} new tokens, temperature 1, top-p 1; median of {s['repeats']} timed calls after "
             "one untimed call of the same shape.", ""]
    rows = [[r["rows"], r["path"], r["tokens"], r["wall_s"], r["tokens_per_s"], r["vs_static"],
             "n/a" if r["peak_allocated_gib"] is None else r["peak_allocated_gib"]] for r in report["rows"]]
    lines += common.table(["rows", "path", "tokens", "s", "tokens/s", "x generate-static", "peak alloc GiB"], rows)
    lines += ["", "x generate-static: this path's tokens/s over `generate` with a static cache at the same rows.",
              "`engine` = `popo.rollout.hf.HFEngine.generate` as configured by default (its own loop: shared "
              "prompt prefill, finished rows dropped); `engine-static` = the same with `decode=\"generate-static\"` "
              "(`generate` with a static cache and popo's compiled seeded draw as its logits processor). Both draw "
              "per-row seeded samples, record their log-probs and decode to text; the bare `generate` rows use "
              "`transformers`' own sampler and do neither.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = part_args.parser(__doc__, model=True)
    parser.add_argument("--rows", type=int, nargs="+", help="rows per call (default 64 256; --cpu: 8 16)")
    parser.add_argument("--new-tokens", type=int, help="tokens per row (default 128; --cpu: 8)")
    parser.add_argument("--group", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    part_args.finish(parser, args, {"rows": ([64, 256], [8, 16]), "new_tokens": (128, 8)})
    import torch

    device = "cpu" if args.cpu else "cuda"
    decoder = Decoder(args.model, device, args.new_tokens, args.group)
    report = {"ok": True, "command": common.command_line(),
              "device": torch.cuda.get_device_name() if device == "cuda" else "CPU", "versions": common.versions(),
              "settings": {"params": sum(p.numel() for p in decoder.model.parameters()),
                           "dtype": str(decoder.model.dtype), "group": args.group,
                           "new_tokens": decoder.new_tokens, "repeats": args.repeats},
              "rows": []}
    for n in args.rows:  # the report is rewritten after each size: a time limit keeps what ran
        results = {path: decoder.measure(path, n, args.repeats) for path in PATHS}
        for r in results.values():
            r["vs_static"] = r["tokens_per_s"] / results["generate-static"]["tokens_per_s"]
            report["rows"].append(r)
            print(f"rows {n:4}  {r['path']:17} {r['tokens_per_s']:10.0f} tokens/s  ({r['wall_s']:.3f} s)", flush=True)
        common.write_result("decode", report, markdown(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
