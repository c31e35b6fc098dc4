"""tests/nbval_sanitize.cfg does what its comments claim: each pattern replaces what changes between runs,
and the numbers that are results survive. Patterns are read and applied as nbval reads and applies them."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import pytest

plugin = pytest.importorskip("nbval.plugin")

CONFIG = Path(__file__).resolve().parent / "nbval_sanitize.cfg"


def _patterns() -> OrderedDict:
    patterns = OrderedDict()  # as nbval's IPyNbFile.setup_sanitize_files fills it
    patterns.update(plugin.get_sanitize_patterns(CONFIG.read_text(encoding="ascii")))
    return patterns


def _sanitize(text: str) -> str:
    for regex, replace in _patterns().items():  # as nbval's IPyNbCell.sanitize applies them
        text = re.sub(regex, replace, text)
    return text


CHANGING = [
    # paths
    ("saved to /tmp/pytest-of-root/pytest-12/test_run0/out.ipynb", "saved to <TMP>"),
    ("cwd '/private/var/folders/x1/abc/T/tmpq2w3' here", "cwd '<TMP>' here"),
    ("data_dir='/var/tmp/kdlib-1/data', seed=0", "data_dir='<TMP>', seed=0"),
    ("/tmp", "<TMP>"),
    ("world at /work/wt/nb/data/world-tiny-s0 (48 images)", "world at <PATH> (48 images)"),
    ('File "/work/main/.venv/lib/python3.11/site-packages/x.py", line 3', 'File "<PATH>", line 3'),
    (r"opened C:\Users\me\AppData\Local\Temp\kd\a.png now", "opened <PATH> now"),
    # progress bars and clocks
    ("world train:   0%|          | 0/144 [00:00<?, ?img/s]", "world train: <PROGRESS>"),
    ("dissect: 100%|##########| 14/14 [00:01<00:00, 12.50it/s]", "dissect: <PROGRESS>"),
    ("batches: 12it [00:00, 345.67it/s]", "batches: <PROGRESS>"),
    ("started 2025-01-31T12:34:56.789+00:00 done", "started <DATETIME> done"),
    ("at 2025-01-31 09:05", "at <DATETIME>"),
    ("elapsed 0:01:02.345, then 12:34:56", "elapsed <TIME>, then <TIME>"),
    ("wall time 1.23 s; step 45ms; total 3 min, 2.5 seconds", "wall time <DURATION>; step <DURATION>; total <DURATION>, <DURATION>"),
    # identifiers
    ("kernel 3f2a1b4c-1d2e-4f5a-8b9c-0d1e2f3a4b5c died", "kernel <UUID> died"),
    ('{"model_id": "5b3f0c7f2d7e4b5c9d0e1f2a3b4c5d6e", "version_major": 2}', '{"model_id": "<MODEL_ID>", "version_major": 2}'),
    ("outputs of default-3fa2b19c and tiny-00c0ffee", "outputs of default-<RUN_ID> and tiny-<RUN_ID>"),
    ("<matplotlib.figure.Figure at 0x7f3a2c1d5e90>", "<matplotlib.figure.Figure at 0x<ADDRESS>>"),
]

RESULTS = [
    "DissectResult(layer2: 13/32 detectors; layer3: 22/64 detectors)",
    "layer2 unit 20: cross (object), IoU 0.037; not a detector (IoU <= 0.04)",
    "(48, ['color', 'object', 'part', 'material', 'scene', 'texture'])",
    "    layer  unit          concept  category    IoU  detector\n0  layer2     1  sky-snow-high-s     scene  0.044      True",
    "accuracy 0.912 over 3 seeds, 60 epochs, lr 0.1, top 0.5% of activations",
    "http://127.0.0.1:8888/lab/tree/08_unit_browser.ipynb",
    "../data/world-tiny-s0 and ./outputs/x and and/or",
    "resnet18_w8: 11.2M parameters, 4x4 maps at 32 px, 2 superclasses",
    "teacher-student pair 12345 and commit deadbee",
]


@pytest.mark.parametrize("text,expected", CHANGING)
def test_what_changes_between_runs_is_replaced(text, expected):
    assert _sanitize(text) == expected


@pytest.mark.parametrize("text", RESULTS)
def test_results_survive(text):
    assert _sanitize(text) == text


def test_every_pattern_is_read_and_used():
    text = CONFIG.read_text(encoding="ascii")  # ASCII: nbval opens the file with the locale's encoding
    patterns = _patterns()
    assert len(patterns) == len(re.findall(r"^regex: ", text, flags=re.MULTILINE)) == 12  # each has its replace line
    for regex in patterns:
        assert any(re.search(regex, sample) for sample, _ in CHANGING), f"no sample exercises {regex!r}"
