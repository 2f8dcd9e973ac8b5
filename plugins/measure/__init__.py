"""Measurement: how good and how fast a search is, kept apart from the search itself.

Nothing here is a plugin or a stage; the CLI (``dnax correlate``, ``dnax profile``,
``dnax bench``) parses arguments and renders what these modules compute.

* :mod:`.correlate`: a run's ratings against a ground-truth CSV (Kendall's τ, Spearman's rho,
  Pearson's r with paired bootstrap intervals, regret, noise ceilings).
* :mod:`.profile`: latency tables (``dnax profile``) and their check against whole networks;
  the latency cost model (:mod:`dnax.plugins.costs.latency`) only reads them.
* :mod:`.bench_data`, :mod:`.bench_train`, :mod:`.bench_rank`, :mod:`.bench_select`: the
  stage benches behind ``dnax bench``;
* :mod:`.reports`: each bench's report (figures, ratios against goals, machine, versions) and
  the rows of its table, which the CLI renders;
* :mod:`.suite`: the parts of ``dnax bench all``, each in a process of its own, under a
  deadline.
"""
