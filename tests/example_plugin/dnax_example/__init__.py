"""dnax-example: registers a teacher (``tinycnn``) and a search space (``convs``).

This module is what the entry point ``[project.entry-points.dnax] example = "dnax_example"``
names; dnax loads it and calls its ``dnax_register_*`` hooks.
"""

import dnax

from .space import ConvSpace
from .teacher import TinyCNNTeacher


@dnax.hookimpl
def dnax_register_teachers(register):
    register("tinycnn", TinyCNNTeacher)


@dnax.hookimpl
def dnax_register_spaces(register):
    register("convs", ConvSpace)
