"""vpt.cpu: the allocator setting that keeps a training step's freed activations for the next step."""
import subprocess
import sys

import pytest

# Six "training steps", each allocating, touching and freeing activations of assorted sizes (above glibc's
# mmap threshold); prints the minor page faults of the last three steps, when the heap has settled.
_PROBE = """
import resource, sys, torch
import vpt.cpu
applied = vpt.cpu.retain_freed_memory() if sys.argv[1] == "retain" else False
sizes_mb = [96, 40, 40, 64, 8, 120]
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = [torch.ones(mb * 2**18) for mb in sizes_mb]
    del activations
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, vpt.cpu.freed_memory_retained(), sum(faults[3:]))
"""
PAGES_PER_STEP = sum([96, 40, 40, 64, 8, 120]) * 2**20 // 4096


def _settled_faults(mode: str) -> tuple[str, str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    applied, retained, faults = out.stdout.split()
    return applied, retained, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt; a no-op elsewhere")
def test_retained_memory_is_reused_without_page_faults():
    applied, retained, faults = _settled_faults("retain")
    assert (applied, retained) == ("True", "True")
    assert faults < 3 * PAGES_PER_STEP // 20, f"{faults} page faults in 3 settled steps of {PAGES_PER_STEP} pages"
    # control: glibc's defaults hand the blocks back to the OS, so every page faults again each step
    applied, retained, faults = _settled_faults("system")
    assert (applied, retained) == ("False", "False")
    assert faults > 3 * PAGES_PER_STEP // 2


def test_trainer_config_applies_it_on_cpu_only(monkeypatch):
    import torch
    from omegaconf import OmegaConf

    from vpt.engine import runtime as engine

    calls = []
    monkeypatch.setattr(engine, "retain_freed_memory", lambda: calls.append(True) or True)
    engine.configure_cpu(OmegaConf.create({"cpu_threads": None, "cpu_retain_freed_memory": True}), torch.device("cpu"))
    engine.configure_cpu(OmegaConf.create({"cpu_threads": None, "cpu_retain_freed_memory": False}), torch.device("cpu"))
    engine.configure_cpu(OmegaConf.create({"cpu_threads": None, "cpu_retain_freed_memory": True}), torch.device("meta"))
    assert calls == [True]


# ---- thread count on a shared machine -------------------------------------------------------------------------
@pytest.mark.parametrize("load, threads, busy", [(0.0, 2, False), (0.4, 2, False), (0.6, 1, True), (1.0, 1, True),
                                                 (5.1, 1, True)])
def test_threads_follow_the_idle_cores_of_two(load, threads, busy):
    from vpt.cpu import choose_cpu_threads

    choice = choose_cpu_threads(None, cores=2, load=load, default=2, environ={})
    assert (choice.threads, choice.busy) == (threads, busy)


def test_thread_choice_on_a_bigger_machine_and_its_message():
    from vpt.cpu import choose_cpu_threads

    assert choose_cpu_threads(None, cores=16, load=3.2, default=16, environ={}).threads == 13
    assert choose_cpu_threads(None, cores=16, load=0.0, default=8, environ={}).threads == 8  # never above torch's
    assert choose_cpu_threads(None, cores=4, load=0.0, default=16, environ={}).threads == 4  # affinity caps it
    busy = choose_cpu_threads(None, cores=2, load=5.1, default=2, environ={})
    assert busy.message() == ("machine busy: load 5.1 on 2 cores, using 1 thread; set trainer.cpu_threads=N to "
                              "override")


def test_an_explicit_thread_count_is_kept_whatever_the_load():
    from vpt.cpu import choose_cpu_threads

    assert choose_cpu_threads(3, cores=2, load=9.0, default=2, environ={}).threads == 3  # trainer.cpu_threads=3
    kept = choose_cpu_threads(None, cores=2, load=9.0, default=2, environ={"OMP_NUM_THREADS": "2"})
    assert kept.threads is None and not kept.busy  # OMP_NUM_THREADS: torch's setting from it stays


def test_a_busy_machine_is_said_in_one_line(monkeypatch, caplog):
    import logging

    import torch

    from vpt import cpu

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "available_cores", lambda: 2)
    monkeypatch.setattr(cpu, "load_on_cores", lambda cores: 5.1)
    monkeypatch.setattr(cpu, "_TORCH_DEFAULT_THREADS", 2)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="vpt.cpu"):
            choice = cpu.set_cpu_threads(None, "cpu")
        assert torch.get_num_threads() == 1 and choice.threads == 1
        assert [r.getMessage() for r in caplog.records] == [choice.message()]
        caplog.clear()
        monkeypatch.setattr(cpu, "load_on_cores", lambda cores: 0.1)
        assert cpu.set_cpu_threads(None, "cpu").threads == 2 and not caplog.records  # idle: nothing said
    finally:
        torch.set_num_threads(before)
