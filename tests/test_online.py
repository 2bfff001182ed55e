"""Hub access fails fast and names the fix when the network is down (HF_HUB_OFFLINE=1 or an unreachable endpoint)."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vpt import online

BIN = Path(sys.executable).parent
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connect is refused at once
BUILD_TIMM = ("import sys, time, vpt\n"
              "start = time.monotonic()\n"
              "try:\n"
              "    vpt.create_backbone('vit_tiny_patch16_224', pretrained=True, image_size=32, patch_size=8, depth=1)\n"
              "finally:\n"
              "    print(f'hub seconds {time.monotonic() - start:.1f}', file=sys.stderr, flush=True)\n")


def offline_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return {**env, "HF_HOME": str(tmp_path / "hf"), "HYDRA_FULL_ERROR": "0", **extra}  # an empty hub cache


def test_an_unreachable_endpoint_is_found_in_a_connect_not_a_minute_of_retries():
    start = time.monotonic()
    assert not online.endpoint_reachable(UNREACHABLE, timeout=2.0)
    assert time.monotonic() - start < 10  # at most the 2 s deadline (refused at once), with room for a loaded machine


def test_hub_calls_run_in_offline_mode_while_the_endpoint_does_not_answer(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(online, "_reachability", {})
    for name in online.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with online.hub_access() as networked:
        assert networked is False and constants.is_offline_mode()
    assert not constants.is_offline_mode()  # restored afterwards
    assert "127.0.0.1:9 is unreachable" in online.why_offline() and "HF_HUB_OFFLINE=1" in online.why_offline()


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": UNREACHABLE}], ids=["offline", "unreachable"])
def test_hub_weights_offline_end_in_one_message_within_seconds(tmp_path, env):
    result = subprocess.run([sys.executable, "-c", BUILD_TIMM], env=offline_env(tmp_path, **env), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode != 0
    seconds = float(re.search(r"hub seconds ([0-9.]+)", result.stderr).group(1))  # the hub part, imports excluded
    message = result.stderr.strip().splitlines()[-1]
    assert "WeightsUnavailableError: could not fetch pretrained weights" in message
    assert "pretrained=false" in message and "HF_HUB_OFFLINE" in message
    assert "Retrying" not in result.stderr and result.stderr.count("thrown while requesting") == 0
    assert seconds < 20, seconds  # huggingface_hub's own back-off (1+2+4+8+8 s per file) takes about a minute


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": UNREACHABLE}], ids=["offline", "unreachable"])
def test_custom_target_backbone_offline_names_the_fix(tmp_path, env):
    result = subprocess.run([str(BIN / "vpt-train"), "backbone=custom", "backbone.model_name=vit_tiny_patch16_224",
                             "backbone.image_size=32", "+backbone.patch_size=8", "+backbone.depth=1",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=offline_env(tmp_path, **env),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "could not fetch pretrained weights" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert "hint: on the command line: backbone.pretrained=false" in result.stderr
    assert "pretrained_cfg_overlay={file:" in result.stderr
    assert "importable path" not in result.stderr and "Traceback" not in result.stderr
    assert "Retrying" not in result.stderr + result.stdout
