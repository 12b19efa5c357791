"""Suites: several models trained on one budget, evaluated on the same clips and compared
(``cttlstm suite run``). :mod:`.schema` reads suite files; :mod:`.runner` runs them."""

from cttlstm_cli.suite.runner import SuiteEvent, SuiteInterrupted, SuiteRun, run_suite, suite_status
from cttlstm_cli.suite.schema import Suite, load_suite, resolve_models

__all__ = ["Suite", "SuiteEvent", "SuiteInterrupted", "SuiteRun", "load_suite", "resolve_models", "run_suite", "suite_status"]
