"""The paper's gradient figures from our implementation, and a training-time GHM histogram monitor.

- :mod:`~ppdet_ghm.analysis.gradients`: gradient norms, histograms and reweighting curves (NumPy).
- :mod:`~ppdet_ghm.analysis.gradient_stats`: their per-level statistics over a data set.
- :mod:`~ppdet_ghm.analysis.plots`: the figures (matplotlib, Agg canvas).
- :mod:`~ppdet_ghm.analysis.plot_gradients`: ``ppdet-ghm plot-gradients`` (model -> figures + data).
- :mod:`~ppdet_ghm.analysis.ghm_monitor`: ``GHMMonitor``, a ppdet Callback logging the per-level GHM
  histograms to the log and VisualDL.

Submodules are imported on demand (matplotlib and VisualDL are not loaded by ``import ppdet_ghm``).
"""
