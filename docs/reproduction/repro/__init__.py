"""The reproduction's steps, one module each; ``docs/reproduction/reproduce.py`` parses the
command line and runs them in order.

* :mod:`.common`: the constants and scales, the results folder (:class:`.common.Experiment`)
  and its raw-file helpers
* :mod:`.search`: the dnax search pipeline, its plugins and stage contexts; ``search``,
  ``longer``
* :mod:`.sample`: the architectures: ``sample``, ``matched``
* :mod:`.blocks`: ``blocks``, the premise per block (candidates trained alone)
* :mod:`.spos`: ``spos``, the one-shot baseline
* :mod:`.standalone`: the truth (stand-alone runs shared by worker processes): ``standalone``,
  and PROTOCOL.md's ``pilot``
* :mod:`.analysis`, :mod:`.table`: ``table``, RESULTS.md from the raw files alone
"""

from . import analysis, blocks, common, sample, search, spos, standalone, table

__all__ = ["analysis", "blocks", "common", "sample", "search", "spos", "standalone", "table"]
