"""``vpt-tune``: the VPT protocol (lr x wd grid on train800/val200, the pick retrained with N seeds on all 1,000 and
tested) for any experiment. ``tune.*`` arguments set the tuning; every other argument goes to each vpt-train run.

    vpt-tune experiment=vtab/cifar100 prompt=deep tune.seeds=5 tune.grid=vpt
    vpt-tune experiment=vtab/cifar100 prompt=deep tune.jobs=4 trainer.cpu_threads=1     # 4 local processes
    vpt-tune experiment=vtab/cifar100 hydra/launcher=slurm hydra.launcher.partition=gpu # one Slurm job per run
    vpt-tune data.val_fraction=0.2 tune.grid=tiny tune.seeds=3                           # the digits quickstart
    vpt-tune prompt=deep tune.grid=prompt_shape                                          # prompt length x depth
    vpt-tune experiment=coop/oxford_pets data.root=/data/oxford_pets            # CoOp's shots x seeds (its tune:)
    vpt-tune experiment=base2new_maple data.root=/data/oxford_pets              # base-to-novel: base, new, HM

Run the same command again after an interruption: finished runs are reused, unfinished ones resume.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

import yaml

from ...errors import ConfigError, VptError
from .grid import grid_names
from .protocol import DEFAULTS, tune

PROGRAM = "vpt-tune"
USER_ERROR_EXIT_CODE = 2  # as vpt-train
OPTION_HELP = {
    "grid": f"a grid in configs/tune/ ({', '.join(grid_names())}) or a YAML file with params: (default: vpt)",
    "seeds": "stage-2 seeds: a count N (seeds 0..N-1) or a list [0,1,2] (default: 5)",
    "max_extend": "rounds that grow an extendable key's range past an edge holding the pick (default: 2)",
    "jobs": "local vpt-train processes at a time, without a hydra/launcher (default: 1)",
    "out": "the tune dir (default: <paths.log_dir>/tune/<name>)",
    "metric": ("the stage-1 score in results.json (default: the config's optimized_metric, else the task's primary "
               "metric on val: val_top1, val_map)"),
    "search_seed": "the seed of the stage-1 runs (default: the config's seed)",
    "final_on_trainval": "stage 2 trains on train+val (default: true; false: VPT's FGVC protocol)",
    "eval_new": "base-to-novel: score each final run's prompt file on the new classes too (vpt-eval into <run>/new; "
                "the table adds new_top1 and hm_top1; default: false)",
    "eval_on": ("cross-dataset / domain generalisation: {name: [vpt-eval overrides]}, each final run's prompt file "
                "scored on those datasets too (vpt-eval into <run>/transfer/<name>; the table adds <name>_top1 and "
                "transfer_mean_top1; e.g. experiment=coop/cross_dataset)"),
    "search": ("false: skip stage 1 and train every grid point with every seed, e.g. tune.grid=coop_fewshot "
               "(default: true)"),
    "search_test": ("false: stage-1 runs skip the test split, whose score the protocol never reads (saves one test "
                    "pass per grid point; default: true)"),
}


def usage() -> str:
    options = "\n".join(f"  tune.{name}=...  {text}" for name, text in OPTION_HELP.items())
    return f"{__doc__}\nOptions (also --name value / --name=value, dashes or underscores):\n{options}\n"


def parse_value(text: str) -> Any:
    """``5`` -> 5, ``[0,1]`` -> [0, 1], ``false`` -> False, ``vpt`` -> 'vpt' (YAML scalars, as Hydra reads them)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_args(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """(tune options, vpt-train overrides). ``--jobs 2`` and ``--max-extend=1`` spell ``tune.jobs=2`` and so on."""
    options: dict[str, Any] = {}
    train_args: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--"):
            name, has_value, value = arg[2:].partition("=")
            if not has_value:
                if not args:
                    raise ConfigError(f"{arg} needs a value, e.g. {arg} 2")
                value = args.pop(0)
            options[name.replace("-", "_")] = parse_value(value)
        elif arg.startswith("tune.") and "=" in arg:
            name, _, value = arg[len("tune."):].partition("=")
            options[name] = parse_value(value)
        else:
            train_args.append(arg)
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid: "
                       f"{', '.join('tune.' + name for name in DEFAULTS)} (see vpt-tune --help)")
    return options, train_args


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(usage())
        return
    try:
        options, train_args = parse_args(argv)
        tune(train_args, **options)
    except VptError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
