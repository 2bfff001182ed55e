"""A/B of the first prompted layer's prompt-keys-only attention backward (vpt/backbones/timm_vit.py).

ViT-S/16 at 224, batch 32, VPT-deep 50 tokens, CPU fp32, 2 threads: train step and no-grad forward with the
special backward on and off, alternating, in one process; prints median step, forward and their ratio.

    .venv/bin/python experiments/ab_first_layer_backward.py [--rounds 8]
"""
import argparse
import statistics
import time

import timm
import torch

import vpt.backbones.timm_vit as timm_vit
import vpt.cpu
from vpt import PromptedModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds (the first is warm-up)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    vpt.cpu.retain_freed_memory()
    model = PromptedModel(timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0),
                          prompt=dict(method="deep", length=50), num_classes=10).train()
    images, labels = torch.randn(32, 3, 224, 224), torch.randint(0, 10, (32,))
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    def forward() -> None:
        with torch.no_grad():
            model(images)

    variants = {"prompt-keys backward": timm_vit._only_prompts_need_grad, "full flash backward": lambda *a: False}
    times: dict[tuple[str, str], list[float]] = {}
    for round_index in range(args.rounds):
        for name, condition in variants.items():
            timm_vit._only_prompts_need_grad = condition
            for kind, fn in (("step", step), ("forward", forward)):
                start = time.perf_counter()
                fn()
                if round_index:
                    times.setdefault((name, kind), []).append(time.perf_counter() - start)
    for name in variants:
        step_s, forward_s = statistics.median(times[(name, "step")]), statistics.median(times[(name, "forward")])
        print(f"{name:22s} step {step_s:.3f} s  forward {forward_s:.3f} s  step/forward {step_s / forward_s:.3f}")


if __name__ == "__main__":
    main()
