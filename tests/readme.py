"""The README's Python examples, for the tests that run them as a user would paste them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def degrade_commands() -> list[list[str]]:
    """The words after ``degrade`` of each command in the README's ```bash blocks (lines joined at
    trailing backslashes, comments and ``&&`` split off), ``torchrun ... -m degrade`` included."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for command in line.split("#")[0].split("&&"):
                words = command.split()
                if "degrade" in words[:-1]:
                    commands.append(words[words.index("degrade") + 1:])
    return commands


def python_example(first_line: str) -> str:
    """The README's ```python block that starts with ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [block for block in blocks if block.startswith(first_line)]
    assert len(found) == 1, f"{README} has {len(found)} python examples starting {first_line!r}"
    return found[0]


def adapted(code: str, replacements: dict[str, str]) -> str:
    """``code`` with each of its texts ``replacements`` names put in place: the GPU, folders and
    sizes of a user's machine for what a test has. Each must be there, so an example that changes
    fails its test rather than running unadapted."""
    for text, here in replacements.items():
        assert text in code, f"the README's example no longer holds {text!r}:\n{code}"
        code = code.replace(text, here)
    return code
