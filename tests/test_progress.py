"""unitscope._progress.progress_bar: in a log (not a terminal) each bar's final line is written once."""
import io
import time

from unitscope._progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _finals(stream, n=3):
    for _ in progress_bar(range(n), file=stream, desc="steps"):
        time.sleep(0.15)  # slower than tqdm's default redraw interval of 0.1 s
    return [line for line in stream.getvalue().replace("\r", "\n").splitlines() if "100%" in line]


def test_log_gets_the_final_line_once():
    assert len(_finals(io.StringIO())) == 1


def test_terminal_keeps_tqdm_defaults():
    # on a terminal the final line is redrawn in place (the same screen line), as tqdm always does
    assert len(_finals(_Terminal())) == 2
    assert progress_bar(file=_Terminal(), total=1).mininterval == 0.1
    assert progress_bar(file=io.StringIO(), total=1, mininterval=2).mininterval == 2
