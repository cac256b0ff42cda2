"""`revela export`: refusals that keep what is there, and uniform file permissions."""

import json

from cli_checks import cli, files, models, one_error_line  # noqa: F401 (fixture)


def test_export_refuses_a_non_empty_folder_and_writes_uniform_permissions(models, tmp_path):
    ckpt, backbone = models
    out = tmp_path / "exported"
    assert cli("export", ckpt, "--out", out).exit_code == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert len(set(modes.values())) == 1, modes  # model.safetensors as readable as the rest
    before = files(out)
    one_error_line(cli("export", backbone, "--out", out), "not empty", "--overwrite")
    one_error_line(cli("export", ckpt, "--out", out, "--max-length", "-1"), "Invalid value for '--max-length': must be at least 2, got -1")
    assert files(out) == before  # the exported model is intact
    res = cli("export", backbone, "--out", out, "--overwrite", "--max-length", "64")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "sentence_bert_config.json").read_text()) == {"max_seq_length": 64}
    assert json.loads((out / "revela_protocol.json").read_text())["query_prefix"] == ""  # the backbone's now
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or old folders left

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    one_error_line(cli("export", ckpt, "--out", notes, "--overwrite"), "holds no model")
    assert (notes / "todo.txt").read_text() == "mine"


def test_export_from_non_models_and_onto_files(models, tmp_path):
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    one_error_line(cli("export", not_a_model, "--out", tmp_path / "a"), "no config.json")
    one_error_line(cli("export", tmp_path / "missing", "--out", tmp_path / "b"), "no such model folder")
    target = tmp_path / "file.bin"
    target.write_bytes(b"keep")
    one_error_line(cli("export", models[0], "--out", target), "exists and is a file")
    assert target.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["file.bin", "notes"]
