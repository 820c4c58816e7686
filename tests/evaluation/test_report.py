import numpy as np
import pytest

from tfattr.attributes import ATTRIBUTE_NAMES
from tfattr.evaluation import report as report_lib


def test_figures_match_hand_computation():
    rng = np.random.default_rng(0)
    labels = rng.random((200, 40)) < 0.3
    predictions = labels.copy()
    predictions[:20, 0] = ~predictions[:20, 0]  # 20 errors on attribute 0
    rep = report_lib.compute_report(predictions, labels)
    assert rep.accuracy[0] == pytest.approx(0.9)
    assert np.all(rep.accuracy[1:] == 1.0)
    pos = labels[:, 0]
    tpr = (predictions[:, 0] & pos).sum() / pos.sum()
    tnr = (~predictions[:, 0] & ~pos).sum() / (~pos).sum()
    assert rep.balanced_accuracy[0] == pytest.approx((tpr + tnr) / 2)
    assert rep.majority_baseline[3] == pytest.approx(max(labels[:, 3].mean(), 1 - labels[:, 3].mean()))


def test_balanced_accuracy_of_constant_predictor_is_half():
    labels = np.zeros((10, 40), bool)
    labels[:3] = True
    rep = report_lib.compute_report(np.zeros_like(labels), labels)
    np.testing.assert_allclose(rep.balanced_accuracy, 0.5)
    np.testing.assert_allclose(rep.accuracy, 0.7)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        report_lib.compute_report(np.zeros((3, 39)), np.zeros((3, 39)))


def test_written_files(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.random((50, 40)) < 0.4
    rep = report_lib.compute_report(labels, labels)
    paths = report_lib.write_report(rep, tmp_path, "test", rendered=ATTRIBUTE_NAMES[:5],
                                    paper_column="celeba")
    text = paths["markdown"].read_text()
    assert "Smiling" in text and "| all 40 | 100.00" in text
    rows = paths["csv"].read_text().splitlines()
    assert rows[0].split(",")[1] == ATTRIBUTE_NAMES[0]
    assert paths["png"].stat().st_size > 1000
    paper = report_lib.read_paper_table1()
    assert any(r.startswith("paper_lnets_anet_celeba") for r in rows)
    assert paper["celeba"].mean() == pytest.approx(0.873, abs=1e-3)  # the paper's 87.30
