"""Checkpoint selection: the thesis rules, their relaxation, the metric mode, the command."""
import csv
import json

import pytest

from harmonize.errors import ConfigError, InputError
from harmonize.select import rule_checks, select_checkpoint

GOOD = {"g_a2b_total": 0.8, "g_b2a_total": 0.9, "d_a_real": 0.05, "d_b_real": 0.1, "d_a_fake": 0.2, "d_b_fake": 0.15}


def write_csv_rows(path, rows):
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def make_run(path, epoch_losses, saved, total=10):
    """A run folder with config.yaml, losses_epoch.csv and checkpoints.csv; epoch_losses maps epoch -> losses."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(f"name: t\ntrain:\n  epochs: {total}\n")
    rows = [{"epoch": e, "step": 10 * e, **GOOD, **epoch_losses.get(e, {})} for e in range(1, total + 1)]
    write_csv_rows(path / "losses_epoch.csv", rows)
    write_csv_rows(path / "checkpoints.csv",
                   [{"step": 10 * e, "epoch": e, "reason": "every 1 epochs", "g_AtoB": f"g_AtoB_{10 * e:06d}.h5",
                     "g_BtoA": f"g_BtoA_{10 * e:06d}.h5"} for e in saved])
    return path


def test_rule_checks():
    assert all(rule_checks(GOOD, 6, 10).values())
    checks = rule_checks({**GOOD, "g_a2b_total": 1.6, "d_b_real": 0.2, "d_a_fake": 0.05}, 5, 10)
    assert not any(checks[k] for k in ("second_half", "g_max", "d_real", "d_fake"))
    assert not rule_checks({**GOOD, "g_a2b_total": 0.5, "g_b2a_total": 1.2}, 8, 10)["g_balanced"]
    assert rule_checks({**GOOD, "g_a2b_total": 0.75, "g_b2a_total": 1.19}, 8, 10)["g_balanced"]  # thesis Exp. 4


def test_all_rules_seeded_choice_among_second_half(tmp_path):
    bad_g = {"g_a2b_total": 2.0}
    run = make_run(tmp_path / "run", {7: bad_g}, saved=[2, 4, 6, 7, 8, 10])
    picks = {select_checkpoint(run, seed=s)["epoch"] for s in range(20)}
    assert picks == {6, 8, 10}  # epochs 2, 4 are in the first half; 7 breaks G < 1.5
    first = select_checkpoint(run, seed=3)
    assert first == select_checkpoint(run, seed=3)
    assert first["rule"] == "all" and first["by"] == "loss-rules"
    assert [c["epoch"] for c in first["candidates"]] == [6, 8, 10]
    assert first["g_AtoB"] == f"g_AtoB_{first['step']:06d}.h5"
    assert "seed 3" in first["reason"] and "3 candidates" in first["reason"]


@pytest.mark.parametrize("losses, rule", [
    ({"d_a_fake": 0.05}, "no-d-fake"),
    ({"d_a_fake": 0.05, "g_a2b_total": 0.3}, "no-balance"),
    ({"d_a_fake": 0.05, "g_a2b_total": 0.3, "d_b_real": 0.4}, "no-d-real"),
    ({"g_a2b_total": 3.0}, "second-half"),
])
def test_rules_relax_in_the_documented_order(tmp_path, losses, rule):
    run = make_run(tmp_path / "run", {e: losses for e in range(1, 11)}, saved=[6, 8, 10])
    chosen = select_checkpoint(run)
    assert chosen["rule"] == rule and "relaxed" in chosen["reason"]
    if rule == "second-half":
        assert chosen["epoch"] == 10  # no loss rule holds: the latest of the second half


def test_only_first_half_checkpoints(tmp_path):
    run = make_run(tmp_path / "run", {}, saved=[1, 3])
    chosen = select_checkpoint(run)
    assert chosen["rule"] == "any" and chosen["epoch"] == 3


def test_select_by_metric(tmp_path):
    run = make_run(tmp_path / "run", {4: {"val_mae_a2b": 30.0}, 6: {"val_mae_a2b": 12.5},
                                      8: {"val_mae_a2b": 20.0}}, saved=[4, 6, 8])
    chosen = select_checkpoint(run, by="metric")
    assert chosen["epoch"] == 6 and chosen["value"] == 12.5 and chosen["rule"] == "min val_mae_a2b"
    with pytest.raises(ConfigError, match="val_mae_a2b"):
        select_checkpoint(run, by="metric", metric="val_ssim")


def test_missing_run_folder_or_logs(tmp_path):
    with pytest.raises(InputError, match="not found"):
        select_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="checkpoints.csv"):
        select_checkpoint(tmp_path / "empty")


def test_command_writes_selected_json(tmp_path, capsys):
    from harmonize.cli import main

    run = make_run(tmp_path / "run", {}, saved=[6, 8])
    assert main(["select", "--run", str(run), "--seed", "1"]) == 0
    selected = json.loads((run / "selected.json").read_text())
    assert set(selected) >= {"step", "epoch", "g_AtoB", "g_BtoA", "rule", "reason", "candidates"}
    assert selected["epoch"] in (6, 8) and "selected step" in capsys.readouterr().out
    assert main(["select", "--run", str(tmp_path / "missing")]) != 0
