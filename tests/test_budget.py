"""The lab's time on task, counted from the notebook sources: the core path fits its 45 minutes and
its 2,000 words, the count agrees with a hand count, and the README shows the script's table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _budget():
    spec = importlib.util.spec_from_file_location("lab_budget", ROOT / "notebooks" / "budget.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


budget = _budget()


def test_the_core_path_fits_45_minutes_and_its_reading_2000_words():
    core = budget.totals(budget.budget(), "core")
    assert core.total <= budget.CORE_MINUTES, f"the core path takes {core.total:.1f} min"
    assert core.words <= budget.CORE_WORDS, f"the core's reading is {core.words} words"
    assert core.questions == ["W4"], "the core has one written reflection"


SOURCE = '''# %% [markdown]
# # A title
#
# One two three four five six.
#
# <details><summary>Why? Seven eight</summary>
#
# nine ten eleven twelve
#
# </details>

# %%
def f(x):
    """Doc."""
    ### BEGIN SOLUTION f: what f is for
    y = x + 1
    # a comment is not a line written

    return y
    ### END SOLUTION


# %% [markdown] tags=["go-further"]
# ## A further question
# Explain it. Answer in 3 to 5 sentences.

# %% [markdown] tags=["answer", "W9", "go-further"]
# ### BEGIN SOLUTION
# Anything.
# ### END SOLUTION
'''


def test_the_count_is_a_hand_count(tmp_path):
    src = tmp_path / "09_example.py"
    src.write_text(SOURCE)
    got = budget.count(src)
    core, further = got["core"], got["go further"]
    # by hand: "# A title" = 2 words ("#" has no letter), "One ... six." = 6; inside the box, the
    # summary's "Why? Seven eight" and "nine ten eleven twelve" = 7 (the tags hold no word)
    assert (core.words, core.skim_words, core.lines, core.sentences) == (8, 7, 2, 0)
    # "## A further question" = 3, "Explain it. Answer in 3 to 5 sentences." = 8
    assert (further.words, further.skim_words, further.lines, further.sentences) == (11, 0, 0, 5)
    assert further.questions == ["W9"]
    assert core.reading == pytest.approx(8 / 150 + 7 / 300)
    assert further.answering == 5


def test_a_written_question_that_does_not_say_its_length_is_refused(tmp_path):
    src = tmp_path / "09_example.py"
    src.write_text(SOURCE.replace(" Answer in 3 to 5 sentences.", ""))
    with pytest.raises(ValueError, match="does not say how many sentences"):
        budget.count(src)


def test_the_readme_shows_the_scripts_table():
    assert budget.markdown(budget.budget()) in (ROOT / "README.md").read_text(), (
        "README.md's time budget is out of date: paste `python notebooks/budget.py --markdown`"
    )
