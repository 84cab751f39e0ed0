"""The shape of the code: short functions (the layers themselves are import-linter's, in `make test`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from longest_functions import MAX_LINES, function_lengths  # noqa: E402


def test_no_function_in_src_is_longer_than_the_limit():
    too_long = [f"{n} lines: {where}" for n, where in function_lengths() if n > MAX_LINES]
    assert not too_long, "split these functions:\n" + "\n".join(too_long)


def test_the_measure_counts_a_function_from_def_to_its_last_line(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    a = 1\n    return a\n\n\nclass C:\n    def g(self):\n        pass\n")
    assert function_lengths(tmp_path) == [(3, "m.py:1 f"), (2, "m.py:7 g")]
