"""The README's embedding example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_embedding_example_runs_and_shuts_down_cleanly(tmp_path):
    text = README.read_text()
    match = re.search(r"<!-- embedding-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "the README lost its embedding example"
    script = tmp_path / "example.py"
    script.write_text(match.group(1))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("frame 30: ")
    assert all(re.fullmatch(r"frame \d+: \d+ bytes, input_seq 1", line) for line in lines)
    assert (tmp_path / "bridge-state" / "sessions.json").exists()
