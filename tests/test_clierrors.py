"""Every `revela` command refuses bad input the same way: one line `error: <why>` and exit status 2."""

from typer.testing import CliRunner

from revela.cli import app


def refusal(*args: str) -> str:
    out = CliRunner().invoke(app, [str(a) for a in args])
    assert out.exit_code == 2, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1, out.output
    return lines[0]


def test_each_command_group_refuses_bad_input_with_one_error_line(tmp_path):
    missing = tmp_path / "missing.yaml"
    assert refusal("train", "-c", missing) == f"error: config file not found: {missing}"
    assert refusal("sweep", "-c", missing) == f"error: config file not found: {missing}"
    assert refusal("evaluate", "--dataset", "d", "--output", tmp_path / "r.json", "--encoder", "gpu") == \
        "error: --encoder: Input should be 'auto', 'local' or 'ray' (got 'gpu')"
    assert refusal("prepare", "--source", tmp_path, "--out", tmp_path / "out", "--grouping", "bm26") == \
        "error: --grouping: Input should be 'adjacent', 'bm25' or 'random' (got 'bm26')"
    assert refusal("export", tmp_path / "no-such-checkpoint", "--out", tmp_path / "x").startswith("error: ")
