"""dnax-example: registers a teacher (``tinycnn``), a search space (``convs``) and a command
(``dnax example-hello``).

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


@dnax.hookimpl
def dnax_register_commands(cli):
    @cli.command("example-hello")
    def example_hello(name: str = "world"):
        """Say hello: the example plugin's own dnax command."""
        print(f"hello {name}, from dnax-example (space 'convs', teacher 'tinycnn')")
