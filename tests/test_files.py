"""Run-dir safety: atomic writes survive crashes, resume state round-trips exactly without pickle, one process
per run dir, finished results are never buried; plus the repo-wide no-pickle guarantee."""
import ast
import errno
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vpt import files
from vpt.errors import ConfigError, VptError
from vpt.files import ResumeStateError, RunDirError

REPO = Path(__file__).resolve().parents[1]


# ---- atomic writes -------------------------------------------------------------------------------------------
def test_atomic_write_accepts_text_bytes_and_writer_and_leaves_no_temp(tmp_path):
    files.atomic_write(tmp_path / "a.txt", "héllo")
    files.atomic_write(tmp_path / "b.bin", b"\x00\x01")
    files.atomic_write(tmp_path / "c.txt", lambda p: Path(p).write_text("from fn"))
    assert (tmp_path / "a.txt").read_bytes() == "héllo".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.txt").read_text() == "from fn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.txt"]


def test_atomic_write_gives_new_files_the_usual_mode(tmp_path):
    (tmp_path / "plain.txt").write_text("x")  # open() honours the umask; so must the writer (not 0600)
    files.atomic_write(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


def test_crash_between_write_and_rename_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_bytes(b'{"top1": 71.3}\n')

    def crash(*args):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_json(target, {"top1": 12.0})
    assert target.read_bytes() == b'{"top1": 71.3}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # temp removed


def test_full_disk_keeps_previous_file(tmp_path):
    target = tmp_path / "best.safetensors"
    files.atomic_save_safetensors(target, {"w": torch.arange(4.0)})
    before = target.read_bytes()

    def full_disk(tmp):
        Path(tmp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        files.atomic_write(target, full_disk)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]


def test_atomic_write_json_writes_non_finite_numbers_as_strings(tmp_path):
    path = files.atomic_write_json(tmp_path / "r.json", {"loss": float("nan"), "best": -math_inf(), "n": np.int64(3)})

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"loss": "nan", "best": "-inf", "n": 3}


def math_inf():
    return float("inf")


def atomic_writer_copies(source: str, filename: str) -> list[str]:
    """Calls that hand-write a file by temp file + rename: the job of vpt.files.atomic_write alone."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func in ("os.replace", "os.rename") or func.endswith(("mkstemp", "NamedTemporaryFile")):
                found.append(f"{filename}:{node.lineno} {func}")
    return found


def test_the_library_has_one_atomic_writer():
    assert atomic_writer_copies("import os, tempfile\nos.replace(a, b)\ntempfile.mkstemp()\n", "bad.py") == \
        ["bad.py:2 os.replace", "bad.py:3 tempfile.mkstemp"]
    library = [p for p in sorted((REPO / "vpt").rglob("*.py"))
               if p.relative_to(REPO / "vpt").parts[0] != "tools" and p.name != "files.py"]
    copies = [hit for p in library for hit in atomic_writer_copies(p.read_text(), str(p.relative_to(REPO)))]
    assert not copies, "write through vpt.files.atomic_write (fsynced) instead:\n" + "\n".join(copies)


def test_detection_files_are_fsynced(tmp_path, monkeypatch):
    from vpt.detection.evaluation import write_predictions

    synced = []
    monkeypatch.setattr(files, "_fsync", lambda path: synced.append(Path(path).name))
    write_predictions(tmp_path / "predictions_test.json", [{"image_id": 1, "score": 0.5}])
    assert (tmp_path / "predictions_test.json").read_text() == '[{"image_id": 1, "score": 0.5}]\n'  # one line
    assert synced[-1] == tmp_path.name and any(n.startswith(".predictions_test.json.") for n in synced)


def test_atomic_save_safetensors_keeps_tensors_and_metadata(tmp_path):
    from safetensors import safe_open

    shared = torch.arange(6.0)
    path = files.atomic_save_safetensors(tmp_path / "p.safetensors", {"a": shared, "b": shared.view(2, 3)}, {"k": 1})
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"k": "1"}
        assert torch.equal(handle.get_tensor("b"), torch.arange(6.0).view(2, 3))


# ---- resume state ------------------------------------------------------------------------------------------
def test_pack_round_trips_types_exactly():
    value = {0: {"step": torch.tensor(3.0), "buf": torch.ones(2)}, "betas": (0.9, 0.999), "best": -float("inf"),
             "nan": float("nan"), "np": np.float32(0.5), "arr": np.arange(3, dtype=np.uint32),
             "big": np.array([2**64 - 1], dtype=np.uint64), "none": None,
             "tricky": {"__tuple__": [1]}, "flag": True, "lst": [1, "a", 2.5]}
    tensors = {}
    meta = files.pack(value, tensors)
    back = files.unpack(json.loads(json.dumps(meta, allow_nan=False)), tensors)
    assert set(back) == set(value) and 0 in back
    assert torch.equal(back[0]["buf"], torch.ones(2)) and back[0]["step"].item() == 3.0
    assert back["betas"] == (0.9, 0.999) and back["best"] == -float("inf") and np.isnan(back["nan"])
    assert type(back["np"]) is np.float32 and back["np"] == 0.5
    assert back["arr"].dtype == np.uint32 and back["arr"].tolist() == [0, 1, 2]
    assert back["big"].dtype == np.uint64 and int(back["big"][0]) == 2**64 - 1
    assert back["tricky"] == {"__tuple__": [1]} and back["flag"] is True and back["lst"] == [1, "a", 2.5]


def test_pack_refuses_objects_it_cannot_store():
    with pytest.raises(TypeError, match="cannot store object at /opt"):
        files.pack({"opt": object()}, {})


def test_rng_states_round_trip_through_files(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.randn(), torch.rand(1)  # move off the seed state; numpy gauss cache is set
    files.save_state(tmp_path / "resume", {}, {"rng": files.capture_rng_states()})
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    _, meta = files.load_state(tmp_path / "resume")
    files.restore_rng_states(meta["rng"])
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expected


def _train(model, optimizer, scheduler, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()


def _make(kind, model):
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4) if kind == "sgd"
                 else torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.99)))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_and_scheduler_continue_identically_after_resume(tmp_path, kind):
    model = torch.nn.Linear(4, 2)
    optimizer, scheduler = _make(kind, model)
    _train(model, optimizer, scheduler, 3, seed=0)
    files.save_state(tmp_path, {k: v for k, v in model.state_dict().items()},
                     {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": 3})
    _train(model, optimizer, scheduler, 3, seed=1)  # the uninterrupted run

    resumed = torch.nn.Linear(4, 2)
    optimizer2, scheduler2 = _make(kind, resumed)
    tensors, meta = files.load_state(tmp_path)
    resumed.load_state_dict(tensors)
    optimizer2.load_state_dict(meta["optimizer"])
    scheduler2.load_state_dict(meta["scheduler"])
    _train(resumed, optimizer2, scheduler2, 3, seed=1)
    assert meta["epoch"] == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["resume.json", "resume.safetensors"]
    for name, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def _saved(tmp_path, name="resume", value=1.0):
    files.save_state(tmp_path / name, {"prompt": torch.full((4, 8), value)}, {"epoch": int(value)})
    return files.state_paths(tmp_path / name)


def _assert_resume_error(path, match_file):
    with pytest.raises(ResumeStateError) as info:
        files.load_state(path)
    message = str(info.value)
    assert isinstance(info.value, VptError)
    assert str(match_file) in message and "delete it to restart, or point trainer.resume at another run" in message
    return message


def test_truncated_tensors_part_is_one_clear_error(tmp_path):
    tensors_path, _ = _saved(tmp_path)
    tensors_path.write_bytes(tensors_path.read_bytes()[:-10])
    _assert_resume_error(tmp_path / "resume", tensors_path)


def test_truncated_json_part_is_one_clear_error(tmp_path):
    _, meta_path = _saved(tmp_path)
    meta_path.write_text(meta_path.read_text()[:20])
    assert "truncated" in _assert_resume_error(tmp_path / "resume", meta_path)


def test_flipped_byte_in_tensor_data_is_detected(tmp_path):
    tensors_path, _ = _saved(tmp_path)
    data = bytearray(tensors_path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data: the header still parses
    tensors_path.write_bytes(bytes(data))
    assert "sha256" in _assert_resume_error(tmp_path / "resume", tensors_path)


def test_parts_from_different_saves_are_refused(tmp_path):
    tensors_a, _ = _saved(tmp_path, "a", 1.0)
    _, meta_b = _saved(tmp_path, "b", 2.0)
    os.replace(meta_b, tmp_path / "a.json")  # a.safetensors with b's JSON
    assert "different saves" in _assert_resume_error(tmp_path / "a", tensors_a)


def test_missing_part_is_named(tmp_path):
    tensors_path, meta_path = _saved(tmp_path)
    meta_path.unlink()
    assert "missing" in _assert_resume_error(tensors_path, meta_path)


# ---- one process per run dir -------------------------------------------------------------------------------
def test_second_lock_in_same_dir_stops_at_once_naming_dir_and_pid(tmp_path):
    with files.RunLock(tmp_path / "run"):
        with pytest.raises(RunDirError) as info:
            files.RunLock(tmp_path / "run").__enter__()
        assert str(tmp_path / "run") in str(info.value) and f"pid {os.getpid()}" in str(info.value)
    with files.RunLock(tmp_path / "run"):  # released on exit
        pass


def test_lock_of_a_killed_process_is_released(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from vpt.files import RunLock; lock = RunLock(sys.argv[1]).__enter__(); "
                               "print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {child.pid}"):
            files.RunLock(tmp_path).__enter__()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    with files.RunLock(tmp_path):
        pass


# ---- no silent overwrite ----------------------------------------------------------------------------------
def _finished_run(run_dir):
    (run_dir / "best").mkdir(parents=True)
    (run_dir / "best" / "prompt.json").write_text("{}")
    (run_dir / "results.json").write_text('{"top1": 71.3}')
    return {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_fresh_run_in_a_finished_run_dir_is_refused_naming_both_ways_out(tmp_path):
    before = _finished_run(tmp_path)
    with pytest.raises(RunDirError) as info:
        files.check_run_dir(tmp_path, resume=False, overwrite=False)
    message = str(info.value)
    assert "trainer.resume=true" in message and "trainer.overwrite=true" in message
    assert "results.json" in message and "best/" in message and str(tmp_path) in message
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_empty_dir_and_resume_are_allowed(tmp_path):
    assert files.check_run_dir(tmp_path / "new", resume=False, overwrite=False) is None
    before = _finished_run(tmp_path)
    assert files.check_run_dir(tmp_path, resume=True, overwrite=False) is None
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_overwrite_moves_old_results_aside(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 0\n")  # the old run's config goes along with its results
    before = _finished_run(tmp_path)
    (tmp_path / "train.log").write_text("not a result")
    aside = files.check_run_dir(tmp_path, resume=False, overwrite=True)
    assert aside.parent == tmp_path and aside.name.startswith("replaced-")
    assert {p.relative_to(aside): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([aside.name, "train.log"])
    files.check_run_dir(tmp_path, resume=False, overwrite=False)  # the dir is free for the new run
    _finished_run(tmp_path)
    second = files.check_run_dir(tmp_path, resume=False, overwrite=True)  # same second: a fresh folder
    assert second != aside and (aside / "results.json").is_file() and (second / "results.json").is_file()


def test_overwrite_moves_what_the_run_made_with_its_results(tmp_path):
    """A task's predictions, vpt-tune's new-class evaluation of best/, the tracker's files: the old run's, moved with
    it; the log Hydra has open for the new run stays."""
    from vpt import run_files

    _finished_run(tmp_path)
    made = [run_files.predictions_file("val"), run_files.predictions_folder("test"), run_files.NEW_CLASSES,
            run_files.TRACKER]
    for name in made:
        (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("[]")
    (tmp_path / "vpt-train.log").write_text("the new run's log")
    assert set(made) <= set(run_files.run_outputs(tmp_path))
    aside = files.check_run_dir(tmp_path, resume=False, overwrite=True)
    assert set(made) <= {p.name for p in aside.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([aside.name, "vpt-train.log"])


def test_resume_and_overwrite_together_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="pass only one"):
        files.check_run_dir(tmp_path, resume=True, overwrite=True)


# ---- nothing in vpt unpickles ----------------------------------------------------------------------------
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib"}


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def pickle_offenders(source: str, filename: str) -> list[str]:
    """Calls and imports that can run code from a file: ast, so docstrings and messages never count."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{where} imports {n}" for n in names if n and n.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if _keyword(node, "weights_only") is False:
                found.append(f"{where} weights_only=False")
            if _keyword(node, "allow_pickle") is True:
                found.append(f"{where} allow_pickle=True")
            if func == "torch.load" and _keyword(node, "weights_only") is not True:
                found.append(f"{where} torch.load without weights_only=True")
            if func in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is not False:
                found.append(f"{where} {func} without allow_pickle=False")
            if func.endswith(("read_pickle", "load_pickle")):
                found.append(f"{where} {func}")
    return found


def _scan(paths) -> list[str]:
    return [hit for path in paths for hit in pickle_offenders(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]


def _is_engine(path: Path) -> bool:
    rel = path.relative_to(REPO / "vpt")
    return rel.parts[0] in ("engine.py", "engine")


def test_scanner_finds_each_kind_of_offender():
    bad = ("import pickle\nfrom joblib import load\nimport torch, numpy as np\n"
           "torch.load('a')\ntorch.load('b', weights_only=False)\nnp.load('c')\nnp.load('d', allow_pickle=True)\n")
    good = ("import torch, numpy as np\n'pickle torch.load( in a docstring'\n"
            "torch.load('a', weights_only=True)\nnp.load('c', allow_pickle=False)\n")
    assert len(pickle_offenders(bad, "bad.py")) == 8  # weights_only=False / allow_pickle=True count twice
    assert pickle_offenders(good, "good.py") == []


def test_no_module_outside_the_engine_can_unpickle():
    paths = [p for p in sorted((REPO / "vpt").rglob("*.py")) if not _is_engine(p)]
    assert len(paths) > 10
    offenders = _scan(paths)
    assert not offenders, "these can run code from a file:\n" + "\n".join(offenders)


def test_engine_cannot_unpickle():
    paths = [p for p in sorted((REPO / "vpt").rglob("*.py")) if _is_engine(p)]
    offenders = _scan(paths)
    assert paths and not offenders, "these can run code from a file:\n" + "\n".join(offenders)


def test_latest_link_points_at_the_newest_run_and_is_replaced_in_one_rename(tmp_path):
    from vpt.files import update_latest_link

    first, second = tmp_path / "2026-01-01_10-00-00", tmp_path / "2026-01-01_10-05-00"
    for run in (first, second):
        (run / "best").mkdir(parents=True)
    assert update_latest_link(first) == tmp_path / "latest" and (tmp_path / "latest").resolve() == first.resolve()
    update_latest_link(second)
    assert os.readlink(tmp_path / "latest") == second.name  # relative: the outputs folder can move
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, second.name, "latest"]  # no temp links left
