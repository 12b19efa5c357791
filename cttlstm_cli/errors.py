"""The one exception type that reaches the user as a single line."""

from __future__ import annotations


class CttlstmError(Exception):
    """A problem with the user's input (files, recipes, options), not a bug.

    The CLI prints ``error: <message>`` on one line and exits non-zero; library
    users get an ordinary exception with the same message.
    """


class RecipeNotice(UserWarning):
    """Something in a recipe still works but has changed (a renamed key, say).

    Issued with :func:`warnings.warn`; the CLI prints each as one ``notice: ...`` line.
    """
