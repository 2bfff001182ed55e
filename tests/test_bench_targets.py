"""experiments/bench_targets.py: the project's acceptance figures judged from vpt-bench's JSON."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "bench_targets.py"


@pytest.fixture(scope="module")
def targets_script():
    spec = importlib.util.spec_from_file_location("bench_targets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_results(backbone="vit_small_patch16_224", batch=32, tasks=8, step_forward=2.0):
    return {"config": {"device": "cpu", "precision": "fp32", "backbone": backbone, "img_size": 224,
                       "batch_size": batch, "prompt_length": 50},
            "methods": {"deep": {"step_forward_ratio": step_forward, "peak_mem_bytes": 7},
                        "full": {"peak_mem_bytes": 10}},
            "multitask": {"tasks": tasks, "mixed_vs_single": 0.95}}


def _judge(tmp_path, results, *args):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    return subprocess.run([sys.executable, str(SCRIPT), str(path), *args], capture_output=True, text=True, timeout=60)


def test_targets_say_whether_the_run_used_the_issues_setting(targets_script):
    def targets(*args):
        return {t["target"]: t for t in targets_script.evaluate_targets(_cpu_results(*args))}

    issue = targets("vit_small_patch16_224", 32, 8)
    assert set(issue) == {"step_forward_cpu", "memory_cpu", "multitask"}
    assert issue["step_forward_cpu"]["pass"] and issue["memory_cpu"]["value"] == 0.7
    assert all(t["issue_setup"] for t in issue.values())
    other = targets("vit_tiny_patch16_224", 4, 2)
    assert not any(t["issue_setup"] for t in other.values())
    assert not targets("vit_small_patch16_224", 32, 2)["multitask"]["issue_setup"]  # 2 tasks, not 8


def test_gpu_targets_from_a_bf16_vit_b_run(targets_script):
    results = {"config": {"device": "cuda", "precision": "bf16", "backbone": "vit_base_patch16_224.augreg_in21k",
                          "img_size": 224, "batch_size": 128, "prompt_length": 50},
               "methods": {"deep": {"step_forward_ratio": 2.4, "peak_mem_bytes": 1, "peak_mem_total_bytes": 60,
                                    "train_img_s": 3100.0},
                           "full": {"peak_mem_bytes": 1, "peak_mem_total_bytes": 100}},
               "pipeline": {"pipeline_vs_on_device": 0.95}}
    targets = {t["target"]: t for t in targets_script.evaluate_targets(results)}
    assert set(targets) == {"step_forward_gpu", "memory_gpu", "gpu_throughput", "pipeline"}
    assert not targets["step_forward_gpu"]["pass"] and targets["step_forward_gpu"]["threshold"] == 2.3
    assert targets["memory_gpu"]["value"] == 0.6 and targets["memory_gpu"]["pass"]  # totals, not above-baseline
    assert targets["gpu_throughput"]["pass"] and targets["pipeline"]["pass"]
    assert all(t["issue_setup"] for t in targets.values())


def test_the_script_prints_the_target_lines_and_passes(tmp_path):
    proc = _judge(tmp_path, _cpu_results())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "target step_forward_cpu PASS  2.000 <= 2.1  (VPT-deep train step / no-grad forward, CPU fp32)",
        "target memory_cpu       PASS  0.700 <= 0.8  (VPT-deep peak RSS above baseline / full fine-tuning's, CPU fp32)",
        "target multitask        PASS  0.950 >= 0.9  (8-task mixed batch throughput / single-task batch)"]


def test_a_failing_target_in_the_issues_setting_exits_1(tmp_path):
    proc = _judge(tmp_path, _cpu_results(step_forward=2.2))
    assert proc.returncode == 1
    assert "target step_forward_cpu FAIL  2.200 <= 2.1" in proc.stdout
    assert "failed: step_forward_cpu" in proc.stderr


def test_a_failing_target_outside_the_issues_setting_counts_only_when_strict(tmp_path):
    results = _cpu_results(backbone="vit_tiny_patch16_224", step_forward=2.2)
    proc = _judge(tmp_path, results)
    assert proc.returncode == 0, proc.stderr
    assert "FAIL  2.200 <= 2.1  (VPT-deep train step / no-grad forward, CPU fp32)  [not the issue's setting]" in proc.stdout
    assert _judge(tmp_path, results, "--strict").returncode == 1


def test_a_failed_measurement_exits_1(tmp_path):
    results = _cpu_results()
    results["yardstick"] = {"error": "yardstick worker failed: ...\nRuntimeError: out of memory"}
    proc = _judge(tmp_path, results)
    assert proc.returncode == 1
    assert "ERROR yardstick: RuntimeError: out of memory" in proc.stdout


def test_a_missing_results_file_names_the_fix(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "none.json")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "run vpt-bench with --out" in proc.stderr


def test_the_tiny_bench_run_is_judged_outside_the_issues_setting(bench_run, targets_script, tmp_path):
    """The real JSON of a (tiny, CPU fp32) vpt-bench run carries every figure the CPU targets read."""
    _, results = bench_run
    targets = {t["target"]: t for t in targets_script.evaluate_targets(results)}
    assert set(targets) == {"yardstick", "step_forward_cpu", "memory_cpu", "multitask", "pipeline"}
    assert not any(t["issue_setup"] for t in targets.values())
    deep, full = results["methods"]["deep"], results["methods"]["full"]
    assert targets["memory_cpu"]["value"] == deep["peak_mem_bytes"] / full["peak_mem_bytes"]
    assert targets["yardstick"]["value"] == results["yardstick"]["speedup_vs_plain_fp32"]
    proc = _judge(tmp_path, results)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) == 5
