"""The demo (``python -m fused_lr.demo``): short runs of every schedule through ``main(argv)``.

Needs the ``demo`` extra (scikit-learn, matplotlib); skipped without it.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from fused_lr import demo  # noqa: E402

EPOCHS = 3
# The LR the demo's per-epoch schedules give at epochs 0..EPOCHS-1 (base LR demo.LR).
EXPECTED_LRS = {
    "step": [demo.LR] * EPOCHS,  # StepLR(step_size=10): no decay yet
    "exp": [demo.LR * 0.9**e for e in range(EPOCHS)],
    "lambda": [demo.LR * 0.95**e for e in range(EPOCHS)],
    "cosine": [demo.LR * (1 + math.cos(math.pi * e / EPOCHS)) / 2 for e in range(EPOCHS)],
}


def _run_main(monkeypatch, argv):
    """main(argv)'s exit status and the dict its run_demo call returned."""
    captured = {}
    real = demo.run_demo

    def spy(**kwargs):
        captured["result"] = real(**kwargs)
        return captured["result"]

    monkeypatch.setattr(demo, "run_demo", spy)
    return demo.main(argv), captured["result"]


@pytest.mark.parametrize("schedule", demo.SCHEDULES)
def test_demo_runs_and_agrees(schedule, tmp_path, monkeypatch, capsys):
    rc, result = _run_main(
        monkeypatch, ["--schedule", schedule, "--epochs", str(EPOCHS), "--out", str(tmp_path), "--seed", "1"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    png = tmp_path / f"demo_{schedule}.png"
    assert result["png"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Against stock SGD(fused=True) (the default) the arithmetic is the same: within PARAM_TOL["fused"].
    assert result["stock_impl"] == "fused"
    assert result["max_param_diff"] <= demo.PARAM_TOL["fused"], result["param_diff_per_epoch"]
    assert result["max_buffer_diff"] <= demo.PARAM_TOL["fused"]
    for name in ("stock", "fused"):
        lrs = result["lrs"][name]
        assert len(lrs) == EPOCHS
        for e, (got, want) in enumerate(zip(lrs, EXPECTED_LRS[schedule])):
            assert got == pytest.approx(want, rel=1e-12), f"{name} LR at epoch {e}"
        assert len(result["losses"][name]) == EPOCHS and all(math.isfinite(v) for v in result["losses"][name])
    assert result["time_stock"] > 0 and result["time_fused"] > 0
    assert "largest |param stock - param fused|" in out and "ratio fused/stock" in out


def test_demo_against_default_stock_impl_without_plot(tmp_path, monkeypatch, capsys):
    """The for-loop baseline rounds differently: a looser bound (see demo.PARAM_TOL), no PNG."""
    rc, result = _run_main(
        monkeypatch,
        ["--epochs", "2", "--stock-impl", "default", "--no-plot", "--out", str(tmp_path / "none")],
    )
    assert rc == 0, capsys.readouterr().out
    assert result["png"] is None and not (tmp_path / "none").exists()
    assert result["max_param_diff"] <= demo.PARAM_TOL["default"]


def test_demo_exits_nonzero_with_a_warning_when_the_runs_disagree(tmp_path, monkeypatch, capsys):
    # A tolerance no difference can meet stands in for a real disagreement.
    monkeypatch.setattr(demo, "PARAM_TOL", {k: -1.0 for k in demo.PARAM_TOL})
    rc, result = _run_main(monkeypatch, ["--epochs", "1", "--no-plot", "--out", str(tmp_path)])
    assert rc == 1
    assert not result["ok"]
    assert "WARNING: stock and fused parameters differ" in capsys.readouterr().out


def test_demo_adamw_against_stock_fused_adamw(tmp_path, monkeypatch, capsys):
    """--optimizer adamw: torch.optim.AdamW(fused=True) vs FusedAdamW, same LRs, parameters and
    exp_avg within PARAM_TOL["fused"] (the same kernel), its own PNG name."""
    rc, result = _run_main(monkeypatch, ["--optimizer", "adamw", "--schedule", "cosine", "--epochs", str(EPOCHS),
                                         "--out", str(tmp_path), "--seed", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert result["optimizer"] == "adamw" and result["png"] == str(tmp_path / "demo_adamw_cosine.png")
    assert result["max_param_diff"] <= demo.PARAM_TOL["fused"] and result["max_buffer_diff"] <= demo.PARAM_TOL["fused"]
    for name in ("stock", "fused"):
        for e, got in enumerate(result["lrs"][name]):
            want = demo.ADAMW_LR * (1 + math.cos(math.pi * e / EPOCHS)) / 2
            assert got == pytest.approx(want, rel=1e-12), f"{name} LR at epoch {e}"
    assert "torch.optim.AdamW(fused=True)" in out and "fused_lr.FusedAdamW(" in out and "exp_avg:" in out
