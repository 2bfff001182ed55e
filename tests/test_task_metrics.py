"""Each task names its primary metric; a null trainer.monitor / optimized_metric means it (vpt.tasks.metric_setting)."""
from __future__ import annotations

import pytest

from vpt.errors import UnknownNameError
from vpt.tasks import get_task, metric_setting, recorded_task


def test_classification_ranks_by_top1_and_detection_by_map():
    assert get_task("classification").metric("val") == "val_top1"
    assert get_task("classification").metric("test") == "test_top1"
    assert get_task("detection").metric("val") == "val_map"
    assert get_task("detection").metric("test") == "test_map"


def test_a_null_setting_is_the_tasks_primary_metric_and_a_set_one_is_kept():
    detection = get_task("detection")
    assert metric_setting(None, detection, "val") == "val_map"
    assert metric_setting("", detection, "val") == "val_map"
    assert metric_setting("val_ap50", detection, "val") == "val_ap50"


def test_the_task_a_run_recorded_results_then_config_then_classification():
    assert recorded_task({"task": "detection"}).name == "detection"
    assert recorded_task({}, {"task": {"name": "detection"}}).name == "detection"
    assert recorded_task({}, {}).name == "classification"  # runs of vpt before tasks
    with pytest.raises(UnknownNameError):
        recorded_task({"task": "no_such_task"})


def test_the_configs_leave_the_metric_to_the_task(compose_config):
    cfg = compose_config([])
    assert cfg.trainer.monitor is None and cfg.optimized_metric is None
    detection = compose_config(["task=detection"])
    assert detection.trainer.monitor is None and detection.optimized_metric is None
