"""The exercise checks inside IPython (Jupyter, nbclient, nbval): a check whose exercise cell never ran.

``install()`` runs when ``minideeplab.grading`` is imported in an IPython shell: in ``checks.exercise_N_K(name)``
a ``name`` that is not defined (its exercise cell never ran: Run All can go on past an error) raises
ExerciseNotDone "Exercise N.K is not done yet" instead of a NameError. (What a failed check shows, its message
without the checker's frames, is the exceptions' own ``_render_traceback_``, in core.py.)
"""

from __future__ import annotations

import ast
import re

from minideeplab.grading.core import ExerciseNotDone

_CHECK = re.compile(r"exercise_(\d+)_(\d+)")


def defined(get, name: str, exercise: str):
    """``get()`` (a lambda reading ``name``), or ExerciseNotDone when ``name`` is not defined."""
    __tracebackhide__ = True  # noqa: F841
    try:
        return get()
    except NameError as e:
        if getattr(e, "name", name) != name:
            raise
    raise ExerciseNotDone(f"Exercise {exercise} is not done yet: `{name}` is not defined. Run the cell "
                          f"'# Exercise {exercise}: ...' (after finishing it), then this check again.") from None


class _CheckArguments(ast.NodeTransformer):
    """``checks.exercise_2_2(f)`` -> ``checks.exercise_2_2(defined(lambda: f, "f", "2.2"))``, line numbers kept."""

    def visit_Call(self, node):
        self.generic_visit(node)
        func = node.func
        attr = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        m = _CHECK.fullmatch(attr)
        if not m or len(node.args) != 1 or node.keywords or not isinstance(node.args[0], ast.Name):
            return node
        arg = node.args[0]
        helper = ast.Attribute(
            value=ast.Call(func=ast.Name("__import__", ast.Load()),
                           args=[ast.Constant(__name__)],
                           keywords=[ast.keyword("fromlist", ast.List([ast.Constant("defined")], ast.Load()))]),
            attr="defined", ctx=ast.Load())
        lam = ast.Lambda(args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
                         body=ast.Name(arg.id, ast.Load()))
        call = ast.Call(func=helper, args=[lam, ast.Constant(arg.id), ast.Constant(f"{m.group(1)}.{m.group(2)}")],
                        keywords=[])
        node.args[0] = ast.copy_location(call, arg)
        ast.fix_missing_locations(node)
        return node


def install(shell=None) -> bool:
    """Install the check-argument rewrite in ``shell`` (the running IPython by default); False outside IPython."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
    if shell is None:
        return False
    if not any(isinstance(t, _CheckArguments) for t in shell.ast_transformers):
        shell.ast_transformers.append(_CheckArguments())
    return True
