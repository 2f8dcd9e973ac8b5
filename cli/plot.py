"""The Pareto-front picture ``dnax inspect`` writes: score against cost, chosen network marked.

Needs matplotlib (the ``plot`` extra); drawn with the Agg backend, so no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import dnax
from dnax.rundir import save_figure

#: random networks drawn as the grey cloud behind the front
SAMPLES = 2000


def sample_networks(rankings: Sequence[dnax.BlockRanking], key: str, metric: str,
                    fixed: float, normalise: str = "none", n: int = SAMPLES, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Score (normalised per block as the selector did) and ``metric`` cost of ``n`` networks
    drawn uniformly from the space."""
    from dnax.plugins.selectors.exact import normalise as rescale

    rng = np.random.default_rng(seed)
    score, cost = np.zeros(n), np.full(n, float(fixed))
    rows = np.zeros(n, dtype=np.int64)  # the row of a width-dependent cost (see BlockRanking)
    for r in rankings:
        pick = rng.integers(len(r.candidates), size=n)
        score += rescale(r.scores[key], normalise)[pick]
        a = np.asarray(r.costs[metric], dtype=np.float64)
        cost += a[pick] if a.ndim == 1 else a[rows, pick]
        if r.cell_widths:
            index = {w: k for k, w in enumerate(r.out_widths)}
            widths = np.array(r.cell_widths)[[c.cell for c in r.candidates]]
            rows = np.array([index[w] for w in widths])[pick]
    return score, cost


def pareto_png(run: dnax.Run, path: str | Path) -> Path | None:
    """Draw each budgeted metric's Pareto front of ``run`` into ``path`` (PNG, written
    atomically); None when the run has no selection or the selector stored no front."""
    sel = run.selection
    if sel is None or not run.run_dir.exists("selection/front.json"):
        return None
    front = run.run_dir.read_json("selection/front.json", kind="pareto-front")
    metrics: list[str] = front["metrics"]
    if not metrics:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise dnax.ConfigError("--png: drawing the Pareto front needs matplotlib "
                               "(pip install 'dnax[plot]'), or pass --no-png") from None

    rankings = run.rankings()
    key = front["key"]
    costs = np.asarray(front["costs"], dtype=np.float64).reshape(-1, len(metrics))
    scores = np.asarray(front["scores"], dtype=np.float64)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    for ax, j, metric in zip(axes[0], range(len(metrics)), metrics, strict=True):
        cloud = (sample_networks(rankings, key, metric, front["fixed"].get(metric, 0.0),
                                 front.get("normalise", "none"))
                 if all(metric in r.costs for r in rankings) else None)
        _panel(ax, metric, key, cloud, costs[:, j], scores, sel, front["budgets"].get(metric))
    fig.suptitle(f"{run.config.get('pipeline', {}).get('name', '')}: Pareto front of "
                 f"{len(scores)} networks by {key}")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def _panel(ax: Any, metric: str, key: str, cloud: tuple[np.ndarray, np.ndarray] | None,
           front_cost: np.ndarray, front_score: np.ndarray, sel: dnax.Selection,
           budget: float | None) -> None:
    if cloud is not None:
        s, c = cloud
        ax.scatter(c, s, s=4, c="0.75", label=f"{len(s)} random networks", rasterized=True)
    order = np.argsort(front_cost, kind="stable")
    ax.step(front_cost[order], front_score[order], where="post", c="tab:blue", lw=1.2)
    ax.scatter(front_cost, front_score, s=10, c="tab:blue", label="Pareto front")
    if budget is not None:
        ax.axvline(budget, c="tab:red", ls="--", lw=1, label=f"budget {budget:,.0f}")
    ax.scatter([sel.costs[metric]], [sel.score], marker="*", s=180, c="tab:orange",
               edgecolors="k", zorder=5, label="selected")
    ax.set_xlabel(metric)
    ax.set_ylabel(f"summed block {key} (lower is better)")
    ax.legend(fontsize=8)
