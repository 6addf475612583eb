"""The HTML report (self-contained, tables also as CSV) and the validation figures."""
import base64

import numpy as np
import pandas as pd
import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_format_number():
    from harmonize.report import format_number

    assert format_number(0.123456) == "0.123"
    assert format_number(0.123456, 2) == "0.12"
    assert format_number(np.int64(27)) == "27"
    assert format_number(30.0) == "30"
    assert format_number(1234.56) == "1234.6"
    assert format_number(float("nan")) == "-" and format_number(None) == "-"
    assert format_number(float("inf")) == "inf"
    assert format_number("A vs B") == "A vs B"


def test_report_is_self_contained_and_writes_csv(tmp_path):
    from harmonize.report import Report
    from harmonize.validation_plots import histogram_figure

    edges = np.linspace(0, 4000, 501)
    hist = np.exp(-0.5 * ((edges[:-1] - 1000) / 100) ** 2)
    fig = histogram_figure({"before": {"A (X)": (edges, hist / hist.sum()), "B (Y)": (edges, np.roll(hist, 5) / hist.sum())}},
                           tmp_path / "figs" / "h.png", map_type="T1", units="ms")
    rep = Report("Title <&>", tmp_path)
    rep.heading("Section")
    rep.paragraph("text with <tags> & ampersands")
    rep.note("a note")
    rep.guide([("Table 2", "what it means")])
    df = pd.DataFrame({"pair": ["A vs B"], "ssim": [0.8123456789], "n": [27]})
    csv = rep.table(df, "table2", caption="Table 2")
    rep.figure(fig, "Fig. 7")
    out = rep.write()
    html = out.read_text()
    assert out == tmp_path / "report.html"
    assert "Title &lt;&amp;&gt;" in html and "text with &lt;tags&gt; &amp; ampersands" in html
    assert "<td>0.812</td>" in html and "<td>27</td>" in html and "[table2.csv]" in html
    # the figure is embedded, byte for byte
    embedded = html.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(embedded) == fig.read_bytes()
    # the CSV keeps full precision
    back = pd.read_csv(csv)
    assert back["ssim"][0] == pytest.approx(0.8123456789, abs=1e-12)
    assert not list(tmp_path.glob(".*partial*"))      # atomic writes leave no temporary files


def test_image_grid_figure_shared_scale_and_checks(tmp_path):
    from harmonize.validation_plots import image_grid_figure, robust_max

    a = np.zeros((3, 16, 16), np.float32)
    a[:, 4:12, 4:12] = 1000.0
    b = a * 1.1
    assert robust_max(a, b, percentile=100) == pytest.approx(1100.0)
    path = image_grid_figure([("A", a, "map"), ("B", b, "map"), ("B - A", b - a, "diff")], tmp_path / "g.png",
                             map_type="T1", units="ms", col_titles=["s0", "s1", "s2"])
    w, h = _png_size(path)
    assert w > h > 100
    with pytest.raises(ValueError, match="slices"):
        image_grid_figure([("A", a, "map"), ("B", b[:2], "map")], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_other_figures(tmp_path):
    from harmonize import validation_plots as vp

    rng = np.random.default_rng(0)
    imgs = rng.uniform(0, 1500, (4, 16, 16))
    heat = rng.uniform(0, 1, (4, 16, 16))
    assert _png_size(vp.gradcam_figure(imgs, heat, ["a", "b", "c", "d"], tmp_path / "gc.png", ncols=2))[0] > 100
    assert _png_size(vp.classifier_examples_figure(imgs, np.array([0.1, 0.6, 0.8, 0.3]), ["A", "A", "B", "B"],
                                                    tmp_path / "ex.png", labels=("X", "Y")))[0] > 100
    runs = pd.DataFrame({"variant": ["full", "full", "cropped"], "accuracy": [0.8, 0.9, 0.7]})
    assert _png_size(vp.accuracy_figure(runs, tmp_path / "acc.png"))[0] > 100
    summary = pd.DataFrame({"method": ["none", "linear", "CycleGAN x"], "bias_pct": [-5.0, 0.5, 0.1],
                            "bias_pct_CSF": [-5, 1, 0], "bias_pct_GM": [-5, 0.2, 0.1], "bias_pct_WM": [-5, 0.1, 0.3]})
    assert _png_size(vp.bias_figure(summary, tmp_path / "bias.png"))[0] > 100
    edges = np.linspace(0, 10, 11)
    panels = [("p1", {"A": (edges, np.ones(10) / 10)}), ("p2", {"fake B": (edges, np.ones(10) / 10)}),
              ("p3", {"B": (edges, np.ones(10) / 10)})]
    assert _png_size(vp.histogram_panels_figure(panels, tmp_path / "hp.png", ncols=2, log=True))[0] > 100
    # the fixed colours: a scanner label keeps the colour of its domain
    assert vp._colour("A (SIGNA)", 5) == vp.COLOURS["A"] and vp._colour("CycleGAN run 3", 0) == "#ff7f0e"
