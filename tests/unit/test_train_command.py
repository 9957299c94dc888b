"""`gdpo train` argument and run-directory handling that needs no workers."""


def test_train_refuses_a_run_dir_with_checkpoints_when_resume_is_false(tmp_path, repo_root, capsys):
    from gdpo_megatron.checkpointing import CheckpointManager
    from gdpo_megatron.cli import main

    run_dir = tmp_path / "run"
    CheckpointManager(run_dir / "checkpoints").save(3, lambda path: (path / "x").write_text("1"))
    (run_dir / "config.yaml").write_text("original")
    code = main(["train", str(repo_root / "recipes/tiny/synthetic-gdpo-1n2c.yaml"), f"trainer.run_dir={run_dir}",
                 "trainer.resume=false"])
    assert code == 1
    assert "trainer.resume=false but" in capsys.readouterr().err
    assert (run_dir / "config.yaml").read_text() == "original"  # refused before touching the run
    assert not (run_dir / "initial_model").exists()
