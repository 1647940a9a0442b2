"""nlutils: the shared engine of the noisy-label replication book.

Modules (one idea each): :mod:`~nlutils.data` (datasets as tensors), :mod:`~nlutils.noise`
(label-noise generators), :mod:`~nlutils.models` (the sources' networks),
:mod:`~nlutils.train` (the training loop), :mod:`~nlutils.results` (metrics, provenance,
run cache), :mod:`~nlutils.profiles` (chapter parameters), :mod:`~nlutils.plot` (figure
helpers).
"""
__version__ = "0.1.0"

from . import data, models, noise, profiles, results, train  # noqa: E402,F401
