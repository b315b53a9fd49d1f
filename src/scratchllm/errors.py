"""The one exception class for mistakes a user can make (files, configs, prompts).

The CLI prints its message on one line and exits non-zero. Bugs are not wrapped: they
still raise their own exceptions with a traceback, so they get noticed and fixed.
"""


class ScratchLLMError(Exception):
    """A user-caused problem. The message names the problem and, where possible, the fix."""
