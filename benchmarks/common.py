"""Shared plumbing of the benchmark entry points: the locally built models, versions and machine
facts, peak memory, medians, and writing a result as JSON + markdown under benchmarks/results/.

Nothing here is part of the `popo` package; the entry points import it as a sibling module.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL_CACHE = ROOT / ".cache" / "bench" / "models"  # POPO_BENCH_CACHE overrides it (the smoke test does)


@dataclass(frozen=True)
class ModelChoice:
    """A benchmark model: a randomly initialised tiny Qwen2 (dims below) or the warmed-up testbed."""

    name: str
    hidden_size: int = 0
    num_hidden_layers: int = 0
    intermediate_size: int = 0
    warmed_testbed: bool = False


MODELS = {
    "0.3m": ModelChoice("0.3m", hidden_size=64, num_hidden_layers=4, intermediate_size=320),
    "2.4m": ModelChoice("2.4m", hidden_size=256, num_hidden_layers=4, intermediate_size=512),
    "testbed": ModelChoice("testbed", warmed_testbed=True),
}


def model_path(name: str, log=print) -> Path:
    """A `save_pretrained` folder (model + character tokenizer) for `name`, built once and cached.

    `0.3m` / `2.4m` are random Qwen2-architecture models (4 heads, 2 KV heads, tied embeddings) on the
    testbed's 52-token character vocabulary; `testbed` is the warmed-up testbed model of the default
    configuration (built by `popo sft` / the demo, a few minutes the first time).
    """
    choice = MODELS[name]
    if choice.warmed_testbed:
        from popo.loading import resolve_model_path
        from popo.config import load_config

        config = load_config(None, [f"testbed.cache_dir={ROOT / '.cache' / 'popo'}"])
        return Path(resolve_model_path(config, log))
    folder = Path(os.environ.get("POPO_BENCH_CACHE", MODEL_CACHE)) / name
    if not (folder / "config.json").is_file():
        from popo.testbed.model import TinyModelSpec, build_tiny_qwen2
        from popo.testbed.tokenizer import build_tokenizer

        tokenizer = build_tokenizer()
        spec = TinyModelSpec(hidden_size=choice.hidden_size, num_hidden_layers=choice.num_hidden_layers,
                             num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=choice.intermediate_size)
        model = build_tiny_qwen2(tokenizer, spec, seed=0)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def hash_reward(text: str, modulus: int = 8) -> float:
    """A framework-independent stand-in reward for random models: 1 for about 1/modulus of all texts.

    A random model never solves the addition task, so with the real verifier every reward would be 0
    and POPO would never train; this keeps the positive fraction near the testbed's (~0.12) while
    staying a pure function of the decoded completion.
    """
    return 1.0 if zlib.crc32(text.encode("utf-8")) % modulus == 0 else 0.0


def text_verifier(rewards):
    """`rewards(completions) -> list[float]` (gold answers unused) behind the verifier interface popo's trainer
    uses (`popo.rewards.base.VerifierBase`; popo is imported when this is called, not with this module)."""
    from popo.rewards.base import VerifierBase

    class TextVerifier(VerifierBase):
        def score(self, completions, answers) -> list[float]:
            return rewards(list(completions))

    return TextVerifier()


def hash_verifier(modulus: int = 8):
    """`hash_reward` behind the verifier interface the trainer uses."""
    return text_verifier(lambda texts: [hash_reward(t, modulus) for t in texts])


def trainer_overrides(*, model: str | Path, algo: str, group: int, prompts: int, max_new_tokens: int, lr: float,
                      steps: int, train_size: int, out_dir: str | Path) -> list[str]:
    """The `key=value` settings every benchmark gives popo's trainer, matching TRL's side: fp32 on the CPU,
    temperature 1, top-p 1, no KL, token-mean aggregation, truncated rollouts kept, gradient clip 1, and
    no evaluation, diagnostics, checkpoints, TensorBoard or progress bar inside the timed steps."""
    return [
        f"model.name={model}", "model.dtype=float32", "model.device=cpu", "data.eval_source=",
        f"testbed.train_size={train_size}", f"algo.name={algo}",
        f"rollout.group_size={group}", f"rollout.prompts_per_step={prompts}",
        f"rollout.max_new_tokens={max_new_tokens}", "rollout.temperature=1.0", "rollout.top_p=1.0",
        "algo.kl_coef=0.0", "algo.aggregation=token-mean", "algo.zero_if_truncated=false",
        f"optim.lr={lr}", "optim.grad_clip=1.0", f"train.steps={steps}", "train.eval_every=0",
        "train.diag_every=0", "train.save_every=0", "train.tensorboard=false", "train.progress=false",
        f"train.out_dir={out_dir}",
    ]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_threads(threads: int) -> None:
    """Fix torch's intra-op threads (0 keeps torch's default). One thread per process keeps timings
    steady when the cores are shared with other jobs, and is applied to every framework alike."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


class Clock:
    """Wall and CPU (user + system, all threads of this process) seconds of one timed block."""

    def __enter__(self) -> "Clock":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "accelerate", *extra):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line() -> str:
    exe = Path(sys.executable)
    try:
        exe = exe.relative_to(ROOT)
    except ValueError:
        pass
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    prefix = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    return prefix + " ".join(shlex.quote(str(a)) for a in [exe, script, *sys.argv[1:]])


def write_result(name: str, result: dict, markdown: str, out: Path | None) -> None:
    """Write `<out>.json` and `<out>.md` (default benchmarks/results/<name>); `out=None` writes nothing."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def header(title: str, result: dict) -> list[str]:
    m = result["machine"]
    return [
        f"# {title}",
        "",
        f"Command (from the repository root): `{result['command']}`",
        "",
        f"Machine: {m['processor']}, `nproc` = {m['nproc']}, {m['platform']}; load average {result.get('loadavg_before')} before, {m['loadavg']} after "
        "(the 2 cores are shared with other jobs, so runs are interleaved and medians reported).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
    ]


def table(columns: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" for _ in columns) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return out


def _fmt(v) -> str:
    if isinstance(v, float) and v != v:  # NaN: not applicable
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)
