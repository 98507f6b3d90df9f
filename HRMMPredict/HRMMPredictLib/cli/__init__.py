"""``hrmm``, the command line of HRMMPredict (``main``: the parser and the commands;
``stats_commands``: ``compare-auc`` and ``dca``; ``demo``: the README's demo). Run it as
``hrmm`` or ``python -m HRMMPredictLib.cli``. Imports nothing at package level."""
