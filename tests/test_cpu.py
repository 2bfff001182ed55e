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
