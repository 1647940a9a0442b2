"""The method modules: one paper each, torch (and numpy) only, copyable alone.

==================  ==========================================================
module              paper
==================  ==========================================================
``reweight``        Learning to Reweight (Ren et al. 2018): exact meta-gradient
``gradsim``         gradient-similarity reweighting (Wei 2020)
``elr``             Early-Learning Regularization (Liu et al. 2020)
``elr_plus``        ELR+ (Liu et al. 2020): two networks, mixup, weight averaging
``correction``      forward/backward loss correction and the T estimator (Patrini et al. 2017)
``robust_losses``   unhinged, sigmoid, Savage and bootstrap losses (Patrini et al.'s table)
``detection``       scores for finding wrong labels: AUROC, precision at k, T-posterior
==================  ==========================================================

None of them imports from the rest of ``nlutils``; the experiment layer
(:mod:`nlutils.registry`) adapts them to the training loop.
"""
