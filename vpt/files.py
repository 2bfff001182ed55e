"""Run-directory safety: atomic writes, resume state without pickle, one process per run dir, no silent overwrite.

* ``atomic_write`` is the one writer: temp file in the same directory, fsync, ``os.replace``. A crash or a full
  disk at any point leaves the previous file byte-identical.
* ``save_state`` / ``load_state`` store resume state as ``<name>.safetensors`` (tensors) + ``<name>.json``
  (everything else). Python/numpy RNG states, optimizer and scheduler ``state_dict()``s are packed into the two
  parts and come back exactly; nothing read from a run dir can execute code.
* ``RunLock`` keeps a second process out of a run dir; ``check_run_dir`` refuses to bury another run's results.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .errors import ConfigError, VptError
from .run_files import LATEST_LINK, LOCK, REPLACED_PREFIX, RESULT_NAMES, RESUME_STATE, run_outputs

log = logging.getLogger(__name__)

STATE_FORMAT = "vpt-state/1"
META_TENSOR_PREFIX = "__meta__/"  # tensors found inside ``meta`` are stored under this prefix
RESTART_FIX = "delete it to restart, or point trainer.resume at another run"


class ResumeStateError(VptError, RuntimeError):
    """A resume state that is missing a part, truncated, corrupt, or mixed from two saves."""


class RunDirError(VptError, RuntimeError):
    """A run directory in use by another process, or holding results this run would bury."""


# ---- atomic writes ---------------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[Path], Any]) -> Path:
    """Write ``content`` (bytes, text, or ``fn(temp_path)`` that writes the file) to ``path`` atomically.

    The temp file sits in the target's directory (``os.replace`` is atomic only within one file system) and is
    fsynced before the rename, so after a crash ``path`` holds either the old or the new complete content.
    """
    if isinstance(content, str):
        content = content.encode("utf-8")
    if not isinstance(content, (bytes, bytearray, memoryview)) and not callable(content):
        raise TypeError(f"atomic_write takes bytes, str or a function of the temp path, not {type(content).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # unique: concurrent writers never collide
    try:
        # O_EXCL + 0o666: a fresh file with the umask's usual mode (mkstemp would make results owner-only)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as handle:
            if not callable(content):
                handle.write(content)
        if callable(content):
            content(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave a stray temp file
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)  # makes the rename itself durable
    return path


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is atomic all the same
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def json_safe(value: Any) -> Any:
    """Plain JSON values: NaN / inf become strings (JSON has none), numpy scalars become Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """``indent=None``: one line, for large files (COCO annotations and detection results)."""
    text = json.dumps(json_safe(obj), indent=indent, default=str, allow_nan=False) + "\n"
    return atomic_write(path, text)


def atomic_save_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                            metadata: Mapping[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    plain = _plain_tensors(tensors)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=meta))


def _plain_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; tensors sharing storage are cloned (safetensors refuses shared memory)."""
    plain, seen = {}, set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(pointer)
        plain[name] = tensor
    return plain


# ---- packing Python state into (tensors, JSON) -------------------------------------------------------------
_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__float__", "__items__", "__npscalar__")


def pack(obj: Any, tensors: dict[str, torch.Tensor], where: str = "") -> Any:
    """JSON-able form of ``obj``; tensors and arrays go into ``tensors`` and are referenced by name.

    Handles what RNG states and optimizer / scheduler ``state_dict()``s hold: tensors, numpy arrays and
    scalars, tuples, dicts with int keys, non-finite floats, and plain JSON values. Anything else is refused.
    """
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": _add_tensor(tensors, where, obj)}
    if isinstance(obj, np.ndarray):  # unsigned ints travel as same-width signed ints: torch lacks most of them
        array = np.ascontiguousarray(obj)
        stored = array.view(f"i{array.itemsize}") if array.dtype.kind == "u" and array.itemsize > 1 else array
        return {"__ndarray__": [_add_tensor(tensors, where, torch.from_numpy(stored)), array.dtype.str]}
    if isinstance(obj, np.generic):
        return {"__npscalar__": [obj.dtype.str, pack(obj.item(), tensors, where)]}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, tensors, f"{where}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack(v, tensors, f"{where}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _TAGS):
            return {k: pack(v, tensors, f"{where}/{k}") for k, v in obj.items()}
        # JSON keys are strings: optimizer state is keyed by int, so keep the keys' types
        return {"__items__": [[pack(k, tensors, f"{where}/key"), pack(v, tensors, f"{where}/{k}")]
                              for k, v in obj.items()]}
    raise TypeError(f"cannot store {type(obj).__name__} at {where or '/'} as tensors + JSON; "
                    "convert it to tensors, arrays or plain values first")


def _add_tensor(tensors: dict[str, torch.Tensor], where: str, tensor: torch.Tensor) -> str:
    name, n = f"{META_TENSOR_PREFIX}{where.strip('/')}", 1
    while name in tensors:
        name, n = f"{META_TENSOR_PREFIX}{where.strip('/')}#{n}", n + 1
    tensors[name] = tensor
    return name


def unpack(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of ``pack``."""
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and next(iter(obj)) in _TAGS:
        tag, value = next(iter(obj.items()))
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__ndarray__":
            return tensors[value[0]].numpy().view(np.dtype(value[1]))
        if tag == "__npscalar__":
            return np.dtype(value[0]).type(unpack(value[1], tensors))
        if tag == "__float__":
            return float(value)
        if tag == "__tuple__":
            return tuple(unpack(v, tensors) for v in value)
        return {unpack(k, tensors): unpack(v, tensors) for k, v in value}  # __items__
    return {k: unpack(v, tensors) for k, v in obj.items()}


def capture_rng_states() -> dict[str, Any]:
    """Every RNG a training step draws from; ``restore_rng_states`` puts them back."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_states(states: Mapping[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---- resume state: <name>.safetensors + <name>.json ---------------------------------------------------------
def state_paths(path: str | os.PathLike, name: str = RESUME_STATE) -> tuple[Path, Path]:
    """(tensors file, JSON file) for a run dir (``<dir>/resume.*``), a prefix, or either part's path."""
    path = Path(path)
    if path.is_dir():
        path = path / name
    elif path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_state(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``tensors`` and ``meta`` (may hold tensors, arrays, RNG / optimizer states: see ``pack``).

    The JSON part is written last and records the tensors file's sha256 and a save id, so a mix of two saves
    (a crash between the two renames) or a damaged tensors file is detected on load.
    """
    tensors_path, meta_path = state_paths(path)
    if any(k.startswith(META_TENSOR_PREFIX) for k in tensors):
        raise ValueError(f"tensor names may not start with {META_TENSOR_PREFIX!r}")
    all_tensors = dict(tensors)
    packed_meta = pack(dict(meta), all_tensors)
    plain = _plain_tensors(all_tensors)
    save_id = secrets.token_hex(8)
    digest = {}

    def write_tensors(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file(plain, str(tmp), metadata={"format": STATE_FORMAT, "save_id": save_id})
        digest["sha256"] = file_sha256(tmp)

    atomic_write(tensors_path, write_tensors)
    record = {"format": STATE_FORMAT, "save_id": save_id, "tensors_file": tensors_path.name,
              "tensors_sha256": digest["sha256"], "meta": packed_meta}
    atomic_write(meta_path, json.dumps(record, allow_nan=False) + "\n")
    return tensors_path, meta_path


def load_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) as given to ``save_state``; one ``ResumeStateError`` for any damaged or mixed state."""
    tensors_path, meta_path = state_paths(path)
    for part in (tensors_path, meta_path):
        if not part.is_file():
            raise ResumeStateError(f"resume state part {str(part)!r} is missing (incomplete state): {RESTART_FIX}")
    record = _read_record(meta_path)
    tensors = _read_tensors(tensors_path, record["save_id"])
    if file_sha256(tensors_path) != record["tensors_sha256"]:
        raise ResumeStateError(f"resume state {str(tensors_path)!r} does not match the sha256 in {meta_path.name}: "
                               f"it is corrupt; {RESTART_FIX}")
    try:
        meta = unpack(record["meta"], tensors)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ResumeStateError(f"resume state {str(meta_path)!r} is corrupt ({err}); {RESTART_FIX}") from err
    plain = {k: v for k, v in tensors.items() if not k.startswith(META_TENSOR_PREFIX)}
    return plain, meta


def _read_record(meta_path: Path) -> dict[str, Any]:
    try:
        record = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResumeStateError(f"resume state {str(meta_path)!r} is truncated or not JSON ({err}); {RESTART_FIX}") from err
    fields = ("format", "save_id", "tensors_sha256", "meta")
    if not isinstance(record, dict) or record.get("format") != STATE_FORMAT or any(f not in record for f in fields):
        raise ResumeStateError(f"{str(meta_path)!r} is not a vpt resume state ({STATE_FORMAT}); {RESTART_FIX}")
    return record


def _read_tensors(tensors_path: Path, save_id: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(tensors_path), framework="pt") as handle:
            stored_id = (handle.metadata() or {}).get("save_id")
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ResumeStateError(f"resume state {str(tensors_path)!r} is truncated or corrupt ({err}); {RESTART_FIX}") from err
    if stored_id != save_id:
        raise ResumeStateError(f"resume state {str(tensors_path)!r} (save id {stored_id}) and its JSON part (save id "
                               f"{save_id}) come from different saves; {RESTART_FIX}")
    return tensors


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (weights, resume states, run records)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- one process per run dir, no silent overwrite ------------------------------------------------------------
class RunLock:
    """``with RunLock(run_dir):`` a second process in the same dir stops at once, naming the pid holding it.

    ``fcntl.flock`` locks belong to the open file, so the OS drops the lock when its process dies, even by
    SIGKILL: a crashed run never leaves the dir locked. The lock file itself stays (removing it would race).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK
        self._handle = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: run unguarded rather than not at all
            log.warning("no fcntl on this platform: %s is not locked against a second process", self.dir)
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirError(f"run dir {str(self.dir)!r} is in use by another vpt process (pid {holder}); wait for "
                              "it to finish or stop it, or pick another output_dir") from err
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.truncate(0)  # the lock itself goes with the close
            self._handle.close()
            self._handle = None


def check_run_dir(run_dir: str | os.PathLike, resume: bool, overwrite: bool,
                  result_names: tuple[str, ...] = RESULT_NAMES) -> Path | None:
    """Refuse to start over another run's results unless resuming it or asked to overwrite.

    With ``overwrite`` the old results and every other output of that run (:func:`vpt.run_files.run_outputs`:
    config.yaml, a task's predictions, ...) are moved, never deleted, to
    ``<run_dir>/replaced-<time>/``, which is returned; otherwise returns None. Call it inside ``RunLock``.
    """
    if resume and overwrite:
        raise ConfigError("trainer.resume=true and trainer.overwrite=true contradict each other: resume continues "
                          "the run in the dir, overwrite replaces it; pass only one")
    run_dir = Path(run_dir)
    found = [name for name in result_names if (run_dir / name).exists()]
    if not found or resume:
        return None
    if not overwrite:
        shown = ", ".join(n + "/" if (run_dir / n).is_dir() else n for n in found)
        raise RunDirError(f"{str(run_dir)!r} already holds another run's results ({shown}); pass "
                          "trainer.resume=true to continue that run, or trainer.overwrite=true to replace it (the old "
                          "files are moved to a replaced-<time>/ folder, not deleted), or pick another output_dir")
    stamp = time.strftime(f"{REPLACED_PREFIX}%Y%m%d-%H%M%S")
    aside, n = run_dir / stamp, 0
    while aside.exists():  # two overwrites within a second
        aside, n = run_dir / f"{stamp}-{n + 1}", n + 1
    aside.mkdir()
    for name in dict.fromkeys([*found, *run_outputs(run_dir)]):  # and all the run made with them (config, ...)
        os.replace(run_dir / name, aside / name)
    log.warning("trainer.overwrite: moved the earlier results (%s) to %s", ", ".join(found), aside)
    return aside


def update_latest_link(run_dir: str | os.PathLike) -> Path | None:
    """Point ``<run_dir's parent>/latest`` at ``run_dir`` (a relative symlink), replacing the previous link in one
    rename, so ``outputs/<name>/latest/best`` is always the newest run's prompt file. Returns the link, or None
    where links cannot be made (the run itself is unaffected)."""
    run_dir = Path(run_dir)
    link = run_dir.parent / LATEST_LINK
    if link.exists() and not link.is_symlink():
        log.warning("%s exists and is not a link; not pointing it at the newest run", link)
        return None
    temporary = run_dir.parent / f".{LATEST_LINK}.{secrets.token_hex(4)}"
    try:
        os.symlink(run_dir.name, temporary, target_is_directory=True)
        os.replace(temporary, link)  # atomic: readers see the old or the new run, never no link
    except OSError as error:
        temporary.unlink(missing_ok=True)
        log.warning("could not point %s at %s (%s)", link, run_dir, error)
        return None
    return link
