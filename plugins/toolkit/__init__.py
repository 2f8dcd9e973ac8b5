"""The toolkit for plugins: what the built-in plugins share, for third-party ones to use too.

* :mod:`.builder`: arch strings / arch defs to the timm layers and the timm ``EfficientNet``;
  the only place dnax builds one.
* :mod:`.supernet`: the supernet contract (protocols, base classes) and ``save_supernet`` /
  ``load_supernet``, which write and check what an evaluator needs.
* :mod:`.training`: autocast, loss scaling with clipping, top-k evaluation, FLOP counting, RNG
  snapshots, DDP wrapping and one resumable epoch loop.
* :mod:`.timing`: median times of interleaved calls (CUDA events on a GPU).
"""
