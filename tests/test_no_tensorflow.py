"""The device runtime never imports TensorFlow (or Keras): the Pi has LiteRT only.

A fresh interpreter imports every module of `sorter` and `firmware_bridge`, runs
`sorter classify` on the committed tiny model, and reports what ended up in sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data" / "classifier"

_PROBE = r"""
import importlib, json, pkgutil, sys
failed = {}
for pkg_name in ("sorter", "firmware_bridge"):
    try:
        pkg = importlib.import_module(pkg_name)
    except ImportError as err:
        failed[pkg_name] = repr(err)
        continue
    for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as err:
            failed[info.name] = repr(err)
from sorter.cli import app
try:
    app(["classify", "--json", "--model", sys.argv[1], sys.argv[2]], standalone_mode=False)
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(json.dumps({"heavy": heavy, "failed": failed, "code": code}))
"""


def test_sorter_and_classify_never_import_tensorflow() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(DATA / "tiny-int8.tflite"), str(DATA / "images")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    graded = [json.loads(ln) for ln in lines[:-1]]
    assert report["code"] in (0, None)
    assert len(graded) == 9 and all(g["label"] in ("long", "round", "bent") for g in graded)
    assert report["failed"] == {}, f"modules that do not import: {report['failed']}"
    assert report["heavy"] == [], (
        f"TensorFlow/Keras imported by the device runtime: {report['heavy']}"
    )
