"""The presets' paper group means (VPT Table 1, V-PETL Bench) and vpt-report's measured group means beside them."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from vpt.tools.report import collect_runs
from vpt.tools.report.cli import main as report_main
from vpt.tools.report.suites import suite_means

EXPERIMENTS = Path(__file__).resolve().parents[1] / "configs" / "experiment"


def recipe_means(suite):
    return yaml.safe_load((EXPERIMENTS / suite / "_recipe.yaml").read_text())["paper_means"]


def test_paper_means_cover_the_presets_and_the_new_methods():
    vtab, fgvc = recipe_means("vtab"), recipe_means("fgvc")
    tasks = sorted(p.stem for p in (EXPERIMENTS / "vtab").glob("*.yaml") if not p.stem.startswith("_"))
    groups = vtab["groups"]
    assert sorted(groups["natural"] + groups["specialized"] + groups["structured"]) == tasks == sorted(groups["all_19"])
    assert sorted(fgvc["groups"]["fgvc_5"]) == sorted(p.stem for p in (EXPERIMENTS / "fgvc").glob("*.yaml")
                                                      if not p.stem.startswith("_"))
    table_1 = vtab["numbers"]["VPT (Jia et al., ECCV 2022) Table 1"]
    assert table_1["partial"] == {"natural": 69.44, "specialized": 78.53, "structured": 34.17}
    assert table_1["adapter"]["structured"] == 36.94 and table_1["sidetune"]["natural"] == 58.21
    assert {m: v["all_19"] for m, v in vtab["numbers"]["V-PETL Bench (VTAB-1k 19-task mean)"].items()} == {
        "lora": 72.25, "adapter": 71.44, "ssf": 73.10, "adaptformer": 72.32}
    assert fgvc["numbers"]["VPT (Jia et al., ECCV 2022) Table 1"]["adapter"] == {"fgvc_5": 85.46}
    # every preset names its task for the grouping
    for path in [*(EXPERIMENTS / "vtab").glob("*.yaml"), *(EXPERIMENTS / "fgvc").glob("*.yaml")]:
        if not path.stem.startswith("_"):
            assert yaml.safe_load(path.read_text())["paper"]["task"] == path.stem


def write_run(path, method, task, top1, means):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"prompt": {"method": method}, "seed": 0,
                                                      "paper": {"task": task}, "paper_means": means}))
    (path / "results.json").write_text(json.dumps({"method": method, "status": "completed", "test_top1": top1,
                                                   "trainable_params": 10}))


def test_vpt_report_puts_measured_group_means_beside_the_papers(tmp_path, capsys):
    means = recipe_means("fgvc")
    tasks = means["groups"]["fgvc_5"]
    for i, task in enumerate(tasks):
        write_run(tmp_path / f"partial_{task}", "partial", task, 80.0 + i, means)
    write_run(tmp_path / "mlp_cub", "mlp", "cub", 70.0, means)  # one task of five: no mean
    rows = {(r["method"], r["group"]): r for r in suite_means(collect_runs(tmp_path))}
    assert rows[("partial", "fgvc_5")]["measured"] == pytest.approx(np.mean([80, 81, 82, 83, 84]))
    assert rows[("partial", "fgvc_5")]["paper"] == 82.63 and rows[("partial", "fgvc_5")]["tasks"] == "5/5"
    assert rows[("mlp", "fgvc_5")]["measured"] is None and rows[("mlp", "fgvc_5")]["tasks"] == "1/5"
    report_main([str(tmp_path), "--no-plots", "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert "| partial | fgvc_5 | 5/5 | 82.00 | 82.63 | VPT (Jia et al., ECCV 2022) Table 1 |" in out
