"""Glued values reach the prose as plain Python numbers: myst-nb formats a glued number from
its text repr, and a numpy scalar's repr (``np.float64(1.01)``) fails any format spec such
as ``{glue:text}`val_se:.1f``` (a warning, so an error under ``-W``)."""
import types

import numpy as np
import pytest

import myst_nb
from nlutils.chapter import Chapter


@pytest.mark.parametrize("value, plain", [(np.float64(1.25), 1.25), (np.int64(3), 3), (2.5, 2.5), ("sym40", "sym40")])
def test_glue_turns_numpy_scalars_into_python_ones(monkeypatch, value, plain):
    sent = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, v, display=False: sent.update({name: v}))
    ch = types.SimpleNamespace(metrics={})
    Chapter.glue(ch, "x", value)
    assert type(sent["x"]) is type(plain) and sent["x"] == plain
    assert repr(sent["x"]) == repr(plain) and ch.metrics["x"] == plain
