"""Every kind of bad input is a user error (issue 15 items 3, 4 and 7).

One parametrized test over the matrix of bad input: hostile or broken recipe files, bad values,
missing files and optional packages, bad command lines, unwritable places, bad data, broken
third-party plugins. Each case runs the real CLI in-process and asserts the contract's exit code,
that the output is one message line (plus at most the indented hint the CLI adds after a failed
run) naming the file and the cause, and that there is no traceback and no "internal error".
"""

from __future__ import annotations

import os
import struct
import sys
import textwrap
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from hemaflow.core.cli import main
from hemaflow.core.plugins import reset_registry

TINY = Path(__file__).resolve().parent / "recipes" / "tiny.yaml"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def child(tmp: Path, body: str, name: str = "r.yaml") -> str:
    """A recipe extending the tiny engine recipe with ``body`` (YAML, top level)."""
    return str(write(tmp / name, f"extends: {TINY}\n" + textwrap.dedent(body).lstrip("\n")))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds almost nothing (a bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def small_png(path: Path) -> Path:
    from hemaflow.lib.imageio import write_png

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((32, 32, 3), 220, np.uint8)
    img[8:20, 8:20] = (120, 60, 160)
    write_png(path, img)
    return path


def unwritable(tmp: Path) -> Path:
    """A folder nobody here can write to: a read-only mode bit, or for root a pseudo file system."""
    if os.geteuid() != 0:
        ro = tmp / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        return ro / "sub"
    for cand in (Path("/sys/hemaflow-test"), Path("/proc/hemaflow-test")):
        try:
            cand.mkdir()
        except OSError:
            return cand
        cand.rmdir()  # pragma: no cover - a writable /sys: nothing to test here
    pytest.skip("no unwritable folder on this machine")


def fake_plugin(tmp: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    """Install a third-party plugin distribution ``name`` (entry point ``name``) on sys.path."""
    mod = f"{name}_mod"
    write(tmp / "site" / f"{mod}.py", source)
    dist = tmp / "site" / f"{name}-1.0.dist-info"
    write(dist / "METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    write(dist / "entry_points.txt", f"[hemaflow]\n{name} = {mod}\n")
    monkeypatch.syspath_prepend(str(tmp / "site"))
    monkeypatch.delenv("HEMAFLOW_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("HEMAFLOW_LOAD_PLUGINS", raising=False)
    reset_registry()


@dataclass
class Case:
    """``setup(tmp, monkeypatch)`` returns the argv; the output must contain every ``says``."""

    id: str
    setup: Callable[[Path, pytest.MonkeyPatch], list[str]]
    code: int
    says: tuple[str, ...]
    lines: int = 1  # message lines (problems); indented hint lines come on top
    never: tuple[str, ...] = ()  # text that must not appear (content of a file that is no recipe)
    fresh_registry: bool = False
    stream: str = "err"
    extra: dict = field(default_factory=dict)


def _v(path: str) -> list[str]:
    return ["validate", path]


def _deep_extends(tmp: Path, _mp) -> list[str]:
    for i in range(1000):
        write(tmp / f"c{i}.yaml", f"extends: c{i + 1}.yaml\n")
    write(tmp / "c1000.yaml", "name: end\n")
    return _v(str(tmp / "c0.yaml"))


def _billion_laughs(tmp: Path, _mp) -> list[str]:
    rows = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        rows.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return _v(str(write(tmp / "laughs.yaml", "\n".join(rows) + "\n")))


def _laughs_flow() -> str:
    """The billion laughs as one flow map (for --set): 8 levels of 9 aliases each."""
    rows = ["a: &a [" + ", ".join(["x"] * 9) + "]"]
    rows += [f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]" for prev, cur in zip("abcdefg", "bcdefgh")]
    return "{" + ", ".join(rows) + "}"


def _fifo(tmp: Path, _mp) -> list[str]:
    os.mkfifo(tmp / "pipe.yaml")
    return _v(str(tmp / "pipe.yaml"))


def _not_a_recipe_keys(tmp: Path, _mp) -> list[str]:
    # what /etc/shadow looks like to YAML once it has spaces: many keys, none a recipe key
    write(tmp / "shadow", "".join(f"user{i}: secret{i} 19000 0 99999 7\n" for i in range(25)))
    return _v(str(write(tmp / "r.yaml", f"extends: {tmp / 'shadow'}\nname: r\n")))


def _one_run_dir(tmp: Path, mp) -> Path:
    run = tmp / "run"
    assert main(["run", str(TINY), "--out", str(run)]) == 0
    return run


def _mlflow_missing(tmp: Path, mp) -> list[str]:
    mp.setitem(sys.modules, "mlflow", None)  # what an environment without MLflow looks like to import
    return _v(child(tmp, "trackers: {ml: {uses: mlflow}}\n"))


def _bomb_dataset(tmp: Path, _mp) -> list[str]:
    small_png(tmp / "data" / "AML" / "ok.png")
    write(tmp / "data" / "AML" / "huge.png", png_header(20000, 20000))
    return ["run", str(write(tmp / "r.yaml", f"""
        name: bomb
        steps:
          data: {{uses: class_folders, with: {{root: {tmp / 'data'}}}}}
    """)), "--out", str(tmp / "out")]


def _manifest_symlink(tmp: Path, _mp) -> list[str]:
    small_png(tmp / "data" / "a.png")
    small_png(tmp / "elsewhere" / "b.png")
    (tmp / "data" / "link.png").symlink_to(tmp / "elsewhere" / "b.png")
    write(tmp / "data" / "m.csv", "image,patient,label\na.png,p1,AML\nlink.png,p2,ALL\n")
    return ["run", str(write(tmp / "r.yaml", f"""
        name: link
        steps:
          data: {{uses: manifest, with: {{path: {tmp / 'data' / 'm.csv'}}}}}
    """)), "--out", str(tmp / "out")]


def _exiting_plugin(tmp: Path, mp) -> list[str]:
    fake_plugin(tmp, mp, "exiter", "import sys\nsys.exit(7)\n")
    return ["plugins", "--json"]


def _failing_plugin(tmp: Path, mp) -> list[str]:
    fake_plugin(tmp, mp, "needsfoo", "raise ImportError('needs libfoo')\n")
    return ["plugins", "--json"]


CASES = [
    # -- recipe files: hostile, broken or not recipes at all (exit 1) --------------------------
    Case("missing-recipe", lambda t, m: _v(str(t / "nope.yaml")), 1, ("nope.yaml", "file not found")),
    Case("directory-as-recipe", lambda t, m: _v(str(t)), 1, ("is a directory",)),
    Case("malformed-yaml", lambda t, m: _v(str(write(t / "r.yaml", "name: r\nsteps: {a: [1, 2\n"))), 1,
         ("r.yaml:3:1", "malformed YAML")),
    Case("duplicate-key", lambda t, m: _v(str(write(t / "r.yaml", "name: r\nseed: 1\nseed: 2\n"))), 1,
         ("r.yaml:3:1", "duplicate key 'seed' (first defined at line 2)")),
    Case("control-character", lambda t, m: _v(str(write(t / "r.yaml", "name: r\x01\n"))), 1,
         ("r.yaml:1:8", "control character U+0001 is not allowed")),
    Case("nul-in-yaml", lambda t, m: _v(str(write(t / "r.yaml", b"name: r\nseed: 1\x00\n"))), 1,
         ("r.yaml:2:8", "NUL byte is not allowed")),
    Case("nul-binary-file", lambda t, m: _v(str(write(t / "r.bin", b"\x7fELF\x02\x01\x00\x00secret"))), 1,
         ("r.bin:1:7", "not a hemaflow recipe: it contains NUL bytes"), never=("secret",)),
    Case("not-utf8", lambda t, m: _v(str(write(t / "r.yaml", "name: caf\xe9\n".encode("latin-1")))), 1,
         ("r.yaml:1:10", "not UTF-8 text")),
    Case("too-large", lambda t, m: _v(str(write(t / "r.yaml", "name: r\n" + "#" * (1 << 20) + "\n"))), 1,
         ("r.yaml", "larger than 1024 KiB")),
    Case("billion-laughs", _billion_laughs, 1, ("laughs.yaml:", "YAML aliases expand to more than 100000 values")),
    Case("recursive-alias", lambda t, m: _v(str(write(t / "r.yaml", "name: &a [*a]\n"))), 1,
         ("r.yaml:1:7", "recursive YAML alias")),
    Case("recursive-merge-key", lambda t, m: _v(str(write(t / "r.yaml", "name: r\nx: &a {<<: *a}\n"))), 1,
         ("r.yaml:2:4", "recursive YAML merge")),
    Case("nesting-5000-deep", lambda t, m: _v(str(write(t / "r.yaml", "name: " + "[" * 5000 + "]" * 5000 + "\n"))),
         1, ("r.yaml:1:", "nest deeper than 64 levels")),
    Case("extends-chain-1000", _deep_extends, 1, ("c31.yaml:1:10", "extends chain deeper than 32 recipes")),
    Case("extends-cycle", lambda t, m: (write(t / "b.yaml", "extends: a.yaml\n"),
                                        _v(str(write(t / "a.yaml", "extends: b.yaml\nname: a\n"))))[1], 1,
         ("b.yaml:1:10", "extends cycle: a.yaml -> b.yaml -> a.yaml")),
    Case("extends-missing", lambda t, m: _v(str(write(t / "r.yaml", "extends: gone.yaml\nname: r\n"))), 1,
         ("r.yaml:1:10", "extended recipe 'gone.yaml' not found")),
    Case("extends-dev-zero", lambda t, m: _v(str(write(t / "r.yaml", "extends: /dev/zero\nname: r\n"))), 1,
         ("/dev/zero", "not a hemaflow recipe: not a regular file")),
    Case("extends-proc-environ", lambda t, m: _v(str(write(t / "r.yaml", "extends: /proc/self/environ\nname: r\n"))),
         1, ("/proc/self/environ", "not a hemaflow recipe")),
    Case("extends-etc-passwd", lambda t, m: _v(str(write(t / "r.yaml", "extends: /etc/passwd\nname: r\n"))), 1,
         ("/etc/passwd", "not a hemaflow recipe"), never=("root", "/bin/")),
    Case("extends-many-unknown-keys", _not_a_recipe_keys, 1, ("shadow", "not a hemaflow recipe: 25 of its 25"),
         never=("user1", "secret")),
    Case("extends-nul-in-name", lambda t, m: _v(str(write(t / "r.yaml", 'extends: "a\\0b.yaml"\nname: r\n'))), 1,
         ("r.yaml:1:10", "not found")),
    Case("fifo-as-recipe", _fifo, 1, ("pipe.yaml", "not a regular file")),
    Case("top-level-list", lambda t, m: _v(str(write(t / "r.yaml", "- name: r\n"))), 1,
         ("r.yaml:1:1", "not a hemaflow recipe: the top level is a list")),
    Case("python-tag", lambda t, m: _v(str(write(t / "r.yaml", "name: !!python/object/apply:os.system [id]\n"))), 1,
         ("r.yaml:1:7", "unsupported YAML tag")),
    Case("reset-as-list-item", lambda t, m: _v(str(write(t / "r.yaml", "name: r\nseed: [!reset]\n"))), 1,
         ("r.yaml:2:8", "!reset removes a key; it cannot be a list item")),
    # -- recipe values: what JSON Schema lets through, and what it catches (exit 1) -------------
    Case("unknown-top-key", lambda t, m: _v(child(t, "stpes: {}\n")), 1, ("r.yaml:2:1", "did you mean 'steps'")),
    Case("unknown-component", lambda t, m: _v(child(t, "steps: {segment: {uses: clasical}}\n")), 1,
         ("r.yaml:2:25", "unknown component 'clasical'; did you mean 'classical'")),
    Case("unknown-parameter", lambda t, m: _v(child(t, "steps: {data: {with: {image_sise: 64}}}\n")), 1,
         ("r.yaml:2:23", "unknown key 'image_sise'; did you mean 'image_size'")),
    Case("wrong-type", lambda t, m: _v(child(t, "steps: {data: {with: {image_size: big}}}\n")), 1,
         ("r.yaml:2:35", "/steps/data/with/image_size", "integer")),
    Case("nan-val-fraction", lambda t, m: _v(child(t, "steps: {split: {uses: patient_kfold, inputs: {images: data}, "
                                                      "with: {k: 2, val_fraction: .nan}}}\n")), 1,
         ("r.yaml:2:", "/steps/split/with/val_fraction: must be a finite number; got .nan")),
    Case("inf-number", lambda t, m: _v(child(t, "steps: {evaluate: {with: {tolerance: .inf}}}\n")), 1,
         ("r.yaml:2:", "must be a finite number; got .inf")),
    Case("inf-in-a-list", lambda t, m: _v(child(t, "steps: {norm: {uses: macenko, inputs: {images: data}, "
                                                   "with: {resize: [64, -.inf]}}}\n")), 1,
         ("r.yaml:2:", "/steps/norm/with/resize/1: must be a finite number; got -.inf")),
    Case("sam-without-checkpoint", lambda t, m: _v(child(t, "steps: {segment: {uses: sam}}\n")), 1,
         ("r.yaml:2:25", "the sam segmenter needs checkpoint: a local SAM or MedSAM .pth file"), lines=2),
    Case("hub-name-as-pretrained", lambda t, m: _v(str(write(t / "r.yaml", f"""
        extends: {Path(__file__).resolve().parents[2] / 'recipes' / 'classify_base.yaml'}
        steps: {{classify: {{with: {{pretrained: timm/resnet18.a1_in1k}}}}}}
    """))), 1, ("r.yaml:2:39", "cannot be downloaded: hemaflow runs offline", "local .safetensors")),
    Case("missing-weights-file", lambda t, m: _v(str(write(t / "r.yaml", f"""
        extends: {Path(__file__).resolve().parents[2] / 'recipes' / 'classify_base.yaml'}
        steps: {{classify: {{with: {{pretrained: /nowhere/w.safetensors}}}}}}
    """))), 1, ("r.yaml:2:39", "/nowhere/w.safetensors", "not found")),
    Case("missing-reference-image", lambda t, m: _v(child(t, "steps: {norm: {uses: macenko, inputs: {images: data}, "
                                                             "with: {reference: /nowhere/ref.png}}}\n")), 1,
         ("r.yaml:2:", "/nowhere/ref.png: file not found")),
    Case("mlflow-not-installed", _mlflow_missing, 1, ("r.yaml:2:23", "the mlflow tracker needs MLflow")),
    Case("input-from-unknown-step", lambda t, m: _v(child(t, "steps: {segment: {inputs: {images: dta}}}\n")), 1,
         ("r.yaml:2:36", "no step 'dta'; did you mean 'data'")),
    Case("input-of-wrong-type", lambda t, m: _v(child(t, "steps: {evaluate: {inputs: {masks: data}}}\n")), 1,
         ("r.yaml:2:", "input 'masks' of segmentation must be MaskSet; 'data' gives ImageSet")),
    Case("steps-form-a-cycle", lambda t, m: _v(child(t, "steps: {a: {uses: morphology, inputs: {masks: b}}, "
                                                        "b: {uses: morphology, inputs: {masks: a}}}\n")), 1,
         ("r.yaml:2:", "steps form a cycle: a -> b -> a")),
    Case("missing-required-input", lambda t, m: _v(child(t, "steps: {pp: {uses: morphology}}\n")), 1,
         ("r.yaml:2:", "morphology needs input 'masks' (MaskSet)")),
    # -- --set (a usage error is 2; a key the schema refuses is a recipe problem, 1) -----------
    Case("set-without-equals", lambda t, m: ["validate", str(TINY), "--set", "seed"], 2,
         ("--set 'seed': expected KEY=VALUE",)),
    Case("set-bad-yaml", lambda t, m: ["validate", str(TINY), "--set", "seed=[1"], 2,
         ("--set 'seed=[1': the value is not valid YAML",)),
    Case("set-recursive-alias", lambda t, m: ["validate", str(TINY), "--set", "seed=&a [*a]"], 2,
         ("--set 'seed=&a [*a]'", "recursive YAML alias")),
    Case("set-5000-deep-value", lambda t, m: ["validate", str(TINY), "--set", "seed=" + "[" * 5000 + "]" * 5000], 2,
         ("--set 'seed=[[[", "nest deeper than 64 levels")),
    Case("set-billion-laughs", lambda t, m: ["validate", str(TINY), "--set", "seed=" + _laughs_flow()], 2,
         ("--set 'seed={a: &a", "YAML aliases expand to more than 100000 values")),
    Case("set-into-a-scalar", lambda t, m: ["validate", str(TINY), "--set", "seed.x=1"], 2,
         ("--set 'seed.x=1': seed is not a mapping",)),
    Case("set-unknown-key", lambda t, m: ["validate", str(TINY), "--set", "steps.data.with.nope=1"], 1,
         ("--set steps.data.with.nope=1", "unknown key 'nope'")),
    Case("set-nan", lambda t, m: ["validate", str(TINY), "--set", "steps.evaluate.with.tolerance=.nan"], 1,
         ("must be a finite number; got .nan",)),
    # -- the command line and the places it names (usage errors, exit 2) ----------------------
    Case("executor-threads", lambda t, m: ["run", str(TINY), "--executor", "threads"], 2,
         ("--executor 'threads': no such executor", "the executors are: ", "processes", "serial")),
    Case("out-in-proc", lambda t, m: ["run", str(TINY), "--out", "/proc/hemaflow-x"], 2,
         ("--out /proc/hemaflow-x: cannot write there",)),
    Case("out-existing-file", lambda t, m: ["run", str(TINY), "--out", str(write(t / "f.txt", "x"))], 2,
         ("f.txt: is an existing file, not a directory",)),
    Case("out-below-a-file", lambda t, m: ["run", str(TINY), "--out", str(write(t / "f.txt", "x") / "run")], 2,
         ("f.txt is a file, not a directory",)),
    Case("out-read-only", lambda t, m: ["run", str(TINY), "--out", str(unwritable(t))], 2,
         ("--out ", "cannot write there",)),
    Case("cache-read-only", lambda t, m: (m.setenv("HEMAFLOW_CACHE_DIR", str(unwritable(t))),
                                          ["run", str(TINY), "--out", str(t / "out")])[1], 2,
         ("cache directory ", "cannot write there", "HEMAFLOW_CACHE_DIR", "--no-cache")),
    Case("cache-is-a-file", lambda t, m: (m.setenv("HEMAFLOW_CACHE_DIR", str(write(t / "c", "x"))),
                                          ["run", str(TINY), "--out", str(t / "out")])[1], 2,
         ("cache directory ", "is an existing file")),
    Case("compare-html-in-proc", lambda t, m: ["compare", str(_one_run_dir(t, m)), "--html", "/proc/x.html"], 2,
         ("--html /proc/x.html: cannot write",)),
    Case("compare-missing-run", lambda t, m: ["compare", str(t / "no-run")], 2, ("no-run",)),
    Case("diff-missing-recipe", lambda t, m: ["diff", str(TINY), str(t / "nope.yaml")], 1,
         ("nope.yaml", "file not found")),
    # -- bad data (a run fails: exit 3, naming the file) -----------------------------------------
    Case("decompression-bomb-png", _bomb_dataset, 3, ("huge.png", "image too large to decode safely")),
    Case("manifest-symlink-escapes", _manifest_symlink, 3,
         ("m.csv:3", "'link.png' leads outside the manifest's folder", "through a symbolic link")),
    # -- broken third-party plugins: a warning naming them, the CLI goes on (exit 0) ------------
    Case("plugin-sys-exit-at-import", _exiting_plugin, 0, ("plugin 'exiter'", "SystemExit: 7"),
         fresh_registry=True, extra={"warning": True}),
    Case("plugin-import-error", _failing_plugin, 0, ("plugin 'needsfoo'", "ImportError: needs libfoo"),
         fresh_registry=True, extra={"warning": True}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_a_clean_user_error(case: Case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        argv = case.setup(tmp_path, monkeypatch)
        capsys.readouterr()
        code = main(argv)
    finally:
        if case.fresh_registry:
            reset_registry()
    out, err = capsys.readouterr()
    text = out + err
    assert "Traceback" not in text and "internal error" not in text, text
    assert code == case.code, text
    lines = [line for line in err.splitlines() if line.strip()]
    if case.extra.get("warning"):
        lines = [line for line in lines if line.startswith("warning:")]
    messages = [line for line in lines if not line.startswith("  ")]  # indented: the CLI's hint
    assert len(messages) == case.lines, err
    message = next((m for m in messages if case.says[0] in m), messages[0])
    for fragment in case.says:
        assert fragment in message, (fragment, message)
    for secret in case.never:
        assert secret not in text, (secret, text)


def test_the_matrix_is_large_enough():
    assert len({c.id for c in CASES}) == len(CASES) >= 40
