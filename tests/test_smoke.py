from mcbench.cli import main


def test_smoke_suite_runs(tmp_path, capsys):
    assert main(["run", "--suite", "smoke", "--no-progress", "--out", str(tmp_path)]) == 0
    assert "| gan |" in capsys.readouterr().out
