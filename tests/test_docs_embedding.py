"""docs/embedding.md's examples (gradcam into a warm out= buffer, a compiled segmentation-IoU metric) run as
written, each in a fresh process."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_embedding_example_runs():
    text = (ROOT / "docs" / "embedding.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 2 and "out=buf" in blocks[0] and "torch.compile" in blocks[1] and "mask_iou" in blocks[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    for block, printed in zip(blocks, ("summed maps in ", "IoU per class: tensor([")):
        out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, env=env, timeout=600,
                             check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        assert printed in out.stdout
