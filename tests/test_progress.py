"""Progress bars: live in a terminal, a line at most every LOG_INTERVAL_S seconds in a log file."""

import io
import time

from degrade.progress import LOG_INTERVAL_S, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines_written(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().replace("\r", "\n").split("\n") if line.strip()]


def test_a_bar_written_to_a_file_writes_its_first_and_last_lines_only_within_the_interval():
    log = io.StringIO()
    with progress_bar(total=200, unit="step", file=log) as bar:
        for step in range(200):  # 0.4 s: tqdm's default would write a line every 0.1 s
            time.sleep(0.002)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{step:.3f}", refresh=False)
    lines = lines_written(log)
    assert len(lines) == 2
    assert bar.mininterval == LOG_INTERVAL_S
    assert lines[0].startswith("  0%") and "200/200" in lines[-1]


def test_a_bar_in_a_terminal_redraws_as_tqdm_does():
    terminal = Terminal()
    with progress_bar(total=10, file=terminal) as bar:
        bar.update(10)
    assert bar.mininterval == 0.1
    assert "10/10" in lines_written(terminal)[-1]


def test_an_interval_set_in_the_environment_is_left_to_tqdm(monkeypatch):
    monkeypatch.setenv("TQDM_MININTERVAL", "5")
    with progress_bar(total=1, file=io.StringIO()) as bar:
        bar.update(1)
    assert bar.mininterval != LOG_INTERVAL_S
