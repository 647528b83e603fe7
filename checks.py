"""What each option of config.Config accepts, written beside its field as `Annotated[type, check]`, and the
checks of the files an option names. Each check's `error(value)` is None or what is wrong, in words that start
with the value; config.validate puts the flag in front. Standard library only.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """A finite number, lo <= x <= hi (strictly where open); an optional field's None is accepted."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def error(self, x) -> str | None:
        if x is None or (math.isfinite(x) and (self.lo is None or x > self.lo or (x == self.lo and not self.lo_open))
                         and (self.hi is None or x < self.hi or (x == self.hi and not self.hi_open))):
            return None
        bounds = ([f"{'>' if self.lo_open else '>='} {self.lo:g}"] if self.lo is not None else []) + \
            ([f"{'<' if self.hi_open else '<='} {self.hi:g}"] if self.hi is not None else [])
        return f"must be a finite number {' and '.join(bounds)}, got {x!r}"


class OneOf:
    def __init__(self, *choices):
        self.choices = choices

    def error(self, x) -> str | None:
        return None if x in self.choices else \
            f"must be {', '.join(self.choices[:-1])} or {self.choices[-1]}, got {x!r}"


class Counts:
    """Comma-separated positive integers, e.g. "6,6,6"; each at most `hi` if given."""

    def __init__(self, hi: int | None = None):
        self.hi = hi

    def error(self, x) -> str | None:
        parts = str(x).split(",")
        if all(p.strip().isdigit() and 0 < int(p) <= (self.hi or int(p)) for p in parts):
            return None
        return f"must be positive integers{f' up to {self.hi}' if self.hi else ''} separated by commas (e.g. 4,4), got {x!r}"


class Path:
    """A path argument: what must be there (subclasses say); None (not given) is accepted."""
    def error(self, x) -> str | None:
        return None if x is None else self.check(x, os.path.expanduser(x))

    def check(self, x: str, p: str) -> str | None:
        return None


class File(Path):
    def __init__(self, exts: tuple):
        self.exts = exts

    def check(self, x, p):
        if not os.path.exists(p):
            return f"{x}: no such file"
        if not os.path.isfile(p):
            return f"{x}: not a file; pass a {' or '.join(self.exts)} file"
        ext = os.path.splitext(p)[1].lower()
        return None if ext in self.exts else f"{x}: a {ext or 'file without extension'}, expected {' or '.join(self.exts)}"


class Folder(Path):
    need = ()                            # files that must be inside
    what = "a folder"

    def check(self, x, p):
        if not os.path.exists(p):
            return f"{x}: no such file or folder"
        if not os.path.isdir(p):
            return f"{x}: a file, expected {self.what}"
        missing = [n for n in self.need if not os.path.exists(os.path.join(p, n))]
        return f"{x}: not {self.what} (it has no {missing[0]})" if missing else None


class Adapter(Folder):
    need, what = ("adapter_config.json", "adapter_model.safetensors"), "a LoRA adapter folder"


class RunDir(Folder):
    what = "a run folder (the --output-dir of an earlier run)"

    def check(self, x, p):
        err = super().check(x, p)
        if err is None and not any(os.path.exists(os.path.join(p, c, "state.pt")) for c in ("ckpt", "ckpt.old")):
            return f"{x}: no checkpoint in it (expected {x}/ckpt/state.pt)"
        return err


class OutputDir(Path):
    def check(self, x, p):
        return f"{x}: a file, expected a folder (or a path that does not exist yet)" \
            if os.path.exists(p) and not os.path.isdir(p) else None


class Model(Path):
    def __init__(self, embedded: str):
        self.embedded = embedded

    def check(self, x, p):
        if x == self.embedded or not (os.path.exists(p) or x.startswith((".", "/", "~"))):
            return None                  # the embedded model, or a hub id (resolved when the model loads)
        if not os.path.isdir(p):
            return f"{x}: no such model folder" if not os.path.exists(p) else f"{x}: a file, expected a model folder"
        return None if os.path.exists(os.path.join(p, "config.json")) else f"{x}: not a model folder (no config.json)"


class Dataset(Path):
    LOADERS = (".jsonl", ".json", ".csv", ".parquet")

    def __init__(self, generated: tuple):
        self.generated = generated

    def check(self, x, p):
        if x in self.generated or not os.path.exists(p):
            return None                  # generated, a preset or a hub id; a missing local file: data.py says so
        if os.path.isdir(p):
            return f"{x}: a folder; pass a {', '.join(self.LOADERS)} file, a preset or a hub dataset id"
        ext = os.path.splitext(p)[1].lower()
        return None if ext in self.LOADERS else \
            f"{x}: a {ext or 'file without extension'} file, which no loader reads; use {', '.join(self.LOADERS)}"


class Url(Path):
    def check(self, x, p):
        return None if x.startswith(("http://", "https://")) else f"{x}: not an http:// or https:// URL"


def offline_values_error(path: str) -> str | None:
    """What is wrong with an --offline-values file, or None: it must hold {prompt: [rewards in [0, 1]]}."""
    fix = "expected a JSON object {prompt: [rewards in [0, 1]]}, as a run's offline_values.json"
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except json.JSONDecodeError as e:
        return f"{path}:{e.lineno}: malformed JSON ({e.msg}); {fix}"
    except (OSError, UnicodeDecodeError) as e:
        return f"{path}: cannot read it ({e}); {fix}"
    if not isinstance(table, dict) or not table:
        return f"{path}: {'an empty object' if table == {} else 'a JSON ' + type(table).__name__}; {fix}"
    for k, v in table.items():
        if not (isinstance(v, list) and v and all(isinstance(x, (int, float)) and 0 <= x <= 1 for x in v)):
            return f"{path}: prompt {k[:50]!r} has {json.dumps(v)[:50]}; {fix}"
    return None


def adapter_rank(folder: str) -> tuple:
    """(LoRA rank, None) from an adapter folder's adapter_config.json, or (None, what is wrong with it)."""
    try:
        with open(os.path.join(folder, "adapter_config.json")) as f:
            return json.load(f)["r"], None
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{folder}: unreadable adapter_config.json ({type(e).__name__}: {e})"
