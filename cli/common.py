"""What every ``dnax`` command shares: the consoles, the error convention and JSON output.

Expected mistakes (:class:`dnax.UserError`) print one line per problem on stderr and exit 2; a
diverged stage (:class:`dnax.DivergenceError`) prints its line and exits 1.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import typer
from rich.console import Console

import dnax

# emoji off: a user's key such as ':cat:' is printed as written
out = Console(soft_wrap=True, emoji=False)
err = Console(stderr=True, soft_wrap=True, highlight=False, emoji=False)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn an expected mistake into one line per problem on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except dnax.UserError as e:
            for line in e.problems:
                err.print(f"error: {line}", markup=False)
            raise typer.Exit(2) from None
        except dnax.DivergenceError as e:
            err.print(f"error: {e}", markup=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def json_default(o: Any) -> Any:
    """JSON for numpy values, paths and attrs classes (the kernel's typed values)."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return dnax.runner.unstructure(o)


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=json_default) + "\n"


def print_json(data: Any) -> None:
    sys.stdout.write(dumps(data))
