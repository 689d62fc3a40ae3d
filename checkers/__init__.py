"""Checks for each step of the lab, and ``python -m checkers grade`` for instructors.

In a notebook: ``from checkers import check_step1; check_step1(RUN_DIR)`` shows a table of every
check, what it expected, what it got, and a hint for each failure.
"""
from .report import Check, Report
from .steps import check_all, check_step1, check_step2, check_step3, check_step4

__all__ = ["Check", "Report", "check_all", "check_step1", "check_step2", "check_step3", "check_step4"]
