"""``vpt-bench``: throughput, memory and prompt-file size of every tuning method, plus two comparisons.

For one backbone / image size / batch size / precision / device it measures, per method (linear, shallow,
deep, pad, full by default):

* train images/s: one step = ``zero_grad`` + forward (autocast) + cross-entropy + backward + SGD step;
* inference images/s: no-grad eval forward;
* step / forward: train-step time over no-grad forward time (train steps and forwards alternate, so
  machine noise hits both alike);
* peak memory: CPU: peak RSS above the process's RSS just before the first step (polled by a thread, and
  cross-checked with ``getrusage``); CUDA: ``torch.cuda.max_memory_allocated`` (total and above the
  allocation before the first step). Every method runs in its own subprocess so methods do not pollute
  each other's memory;
* trainable parameters and prompt-file bytes (``save_prompt`` into a temporary directory).

Comparisons, each in its own subprocess, contenders alternating step by step:

* yardstick: a plain timm-based VPT-deep (timm blocks, prompts concatenated before each block, fp32)
  against vpt's VPT-deep at ``--yardstick-precision`` (``auto``: bf16 autocast where the CPU / GPU has bf16
  arithmetic);
* multi-task: a batch mixing ``--tasks`` tasks (VPT-deep prompt files with different random prompts and
  heads, loaded into one :class:`vpt.PromptBank`) against a single-task batch through the same bank.

The table goes to stdout, everything to ``--out`` (JSON). Timings use the median step (robust to other
processes stealing the CPU); the raw per-step times are in the JSON.

Example (the issue's CPU run): ``vpt-bench --backbone vit_small_patch16_224 --img-size 224 --batch-size 32
--precision fp32 --device cpu --warmup 2 --steps 3 --out results.json``

Modules: :mod:`~vpt.tools.bench.runtime` (device, precision, clocks, memory probes, a worker's setup and
timing), :mod:`~vpt.tools.bench.models` (what is run and its FLOPs), :mod:`~vpt.tools.bench.workers` (the
measurements, one process each), :mod:`~vpt.tools.bench.report` (the table), :mod:`~vpt.tools.bench.cli`
(arguments and the run). The benchmark reports figures; the project's pass/fail targets are judged by
``experiments/bench_targets.py`` from the JSON.
"""
from .cli import DEFAULT_METHODS, build_parser, main, measure, run, spec_from_args
from .models import PlainTimmVPT, build_model, count_flops, flops_per_image, parameters_frozen, prompt_config
from .report import format_table
from .workers import WORKERS, pipeline_dataset, run_worker

__all__ = ["DEFAULT_METHODS", "PlainTimmVPT", "WORKERS", "build_model", "build_parser", "count_flops",
           "flops_per_image", "format_table", "main", "measure", "parameters_frozen", "pipeline_dataset",
           "prompt_config", "run", "run_worker", "spec_from_args"]
