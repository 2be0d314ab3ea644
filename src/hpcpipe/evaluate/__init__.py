"""Evaluation of trained models on the test split, against persistence and climatology.

The modules, in the order the data flows through them:

* :mod:`~hpcpipe.evaluate.step`: the ``evaluate`` step: load model.pt, predict the test
  inputs block by block, score, write the five declared outputs (``OUTPUTS``).
* :mod:`~hpcpipe.evaluate.scoring`: forecasts, observations and the two baselines in
  normalised and physical units; ``evaluate_forecasts`` turns them into skill, error maps and
  the metrics.json dict. Testable without a model.
* :mod:`~hpcpipe.evaluate.metrics`: the WeatherBench 2 formulas (RMSE, ACC, RMSE maps,
  extreme-event scores), pure xarray.
* :mod:`~hpcpipe.evaluate.plots`: skill against lead, error maps, loss curve.
* :mod:`~hpcpipe.evaluate.summary`: ``summarize``: one table and chart across models and seeds.

Nothing is imported here, so that importing any one module stays light; torch is imported
only when ``step.evaluate`` loads a model.
"""
