"""The one GPU-check command refuses clearly on a CPU, and a hung step ends as a failure."""

from __future__ import annotations

import sys

import gpu_check
import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal without CUDA")
def test_refuses_in_one_line_without_cuda(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "CUDA is not available" in out[0]
    assert "no GPU check was run" in out[0]
    assert "CUDA is not available" in (tmp_path / "summary.md").read_text()


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_failed_capture_stops_before_the_other_steps(tmp_path, capsys):
    plan = [
        gpu_check.Step(
            "preflight", _py("print('capture failed: boom'); raise SystemExit(4)"), 30, "p"
        ),
        gpu_check.Step("never", _py("open('ran', 'w')"), 30, "must not run"),
    ]
    assert gpu_check.main(["--out", str(tmp_path)], plan) == 2
    assert "capture failed: boom" in capsys.readouterr().out
    assert plan[1].status == "not run"


def test_a_hung_step_times_out_and_the_rest_still_run(tmp_path, capsys):
    plan = [
        gpu_check.Step("preflight", _py("print('Fake GPU')"), 30, "p"),
        gpu_check.Step("hang", _py("import time; time.sleep(60)"), 1, "hangs"),
        gpu_check.Step("fine", _py("print('ok')"), 30, "passes"),
    ]
    assert gpu_check.main(["--out", str(tmp_path)], plan) == 1
    assert plan[1].status == "timed out after 1 s" and plan[1].wall_s < 30
    assert plan[2].status == "passed"
    text = (tmp_path / "summary.md").read_text()
    assert "Device: Fake GPU" in text and "timed out after 1 s" in text
    assert "failed: hang" in capsys.readouterr().out


def test_limits_fit_eight_minutes(tmp_path):
    assert sum(s.limit_s for s in gpu_check.steps(tmp_path)) <= 8 * 60
