//! Figures: PNGs decode at the requested size and show the series' colours, SVGs carry the legend labels,
//! bad paths are errors naming the path, and the max-|v| downsampling keeps every column's maximum; y ticks
//! are round numbers, a lone point is drawn, and `rotadam plot` takes `--out y.png` and torn metrics.

use crate::util::tmp;
use rotadam::plot::{
    aggregate, axis_ticks, column_start, downsample_max_abs, figure_stem, Axes, BarChart, BarGroup,
    LineChart, Marker, RowPlot, RowValues, Scale, Series, Spread, PALETTE,
};
use rotadam::rng::Rng;
use rotadam::sweep::plot_runs::{self, Metric, PlotOptions};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn decode(path: &std::path::Path) -> image::RgbImage {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{}: PNG signature",
        path.display()
    );
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

fn colours(img: &image::RgbImage) -> HashSet<[u8; 3]> {
    img.pixels().map(|p| p.0).collect()
}

/// Pixels within `tol` per channel of `c`.
fn count_near(img: &image::RgbImage, c: [u8; 3], tol: i32) -> usize {
    img.pixels()
        .filter(|p| (0..3).all(|k| (p.0[k] as i32 - c[k] as i32).abs() <= tol))
        .count()
}

/// The trimmed contents of the SVG's <text> elements.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = t.split_once('>')?.1;
            Some(body.split_once("</text>")?.0.trim().to_string())
        })
        .collect()
}

fn pal(i: usize) -> [u8; 3] {
    let (r, g, b) = PALETTE[i];
    [r, g, b]
}

fn curve(scale: f64, offset: f64) -> Vec<(f64, f64)> {
    (0..50)
        .map(|i| (i as f64 * 10.0, offset + scale * (-(i as f64) / 15.0).exp()))
        .collect()
}

fn loss_chart() -> LineChart {
    let runs_a = vec![curve(8.0, 3.0), curve(8.5, 3.1), curve(7.5, 2.9)];
    let runs_b = vec![curve(9.0, 3.5), curve(9.5, 3.6)];
    LineChart {
        axes: Axes::new("loss curves", "step", "train loss").size(640, 400),
        series: vec![
            Series::mean_min_max("rotation none", &aggregate(&runs_a)),
            Series::mean_min_max("rotation global", &aggregate(&runs_b)),
            Series::new("val none", curve(8.0, 3.3)).color(0).dashed(),
        ],
    }
}

#[test]
fn line_chart_png_has_size_and_series_colours() {
    let d = tmp("plot-lines");
    let p = d.join("loss.png");
    loss_chart().save(&p).unwrap();
    let img = decode(&p);
    assert_eq!(img.dimensions(), (640, 400));
    let cs = colours(&img);
    assert!(cs.len() >= 6, "only {} distinct colours: blank?", cs.len());
    // Lines are anti-aliased but 2 px wide: their exact colour appears.
    for i in [0, 1] {
        let n = count_near(&img, pal(i), 0);
        assert!(n > 50, "series {i}: colour {:?} on {n} pixels", pal(i));
    }
    // The band: the series colour at 20% over white.
    let band = pal(1).map(|c| (0.2 * c as f64 + 0.8 * 255.0).round() as u8);
    assert!(
        count_near(&img, band, 2) > 200,
        "band colour {band:?} not found"
    );
    assert!(
        count_near(&img, [255, 255, 255], 0) > 10_000,
        "no white background"
    );
}

#[test]
fn line_chart_svg_has_legend_labels_and_log_axis() {
    let d = tmp("plot-svg");
    let mut c = loss_chart();
    c.axes = c.axes.log_y();
    let (png, svg) = c.save_png_svg(&d.join("loss")).unwrap();
    assert_eq!(png, d.join("loss.png"));
    assert_eq!(decode(&png).dimensions(), (640, 400));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.trim_start().starts_with("<svg"),
        "not an SVG: {}",
        &text[..60]
    );
    assert!(text.trim_end().ends_with("</svg>"));
    assert_eq!(
        text.matches("<text").count(),
        text.matches("</text>").count()
    );
    for label in [
        "rotation none",
        "rotation global",
        "val none",
        "loss curves",
        "train loss",
    ] {
        assert!(text.contains(label), "SVG lacks {label:?}");
    }
    // Log axis tick labels are data values: the range 2.9..11.5 spans the decade 1..100 → "10" is a tick.
    assert!(
        svg_texts(&text).iter().any(|t| t == "10"),
        "no 10 tick on the log axis"
    );
}

#[test]
fn error_bars_and_nonpositive_values_on_log_axis() {
    // The quadratic figure's shape: mean ± std with a lower end below 0 on a log axis (clamped).
    let runs: Vec<Vec<(f64, f64)>> = (0..3)
        .map(|s| {
            (0..6)
                .map(|i| {
                    (
                        i as f64 * 0.5,
                        1e-4 * 10f64.powi(i) * (1.0 + 0.5 * s as f64),
                    )
                })
                .collect()
        })
        .collect();
    let stats = aggregate(&runs);
    let mut s = Series::mean_std_bars("adam", &stats);
    if let Some(Spread::ErrorBars(b)) = &mut s.spread {
        b[0].1 = -1.0;
    }
    let c = LineChart {
        axes: Axes::new("quadratic", "theta", "final loss").log_y(),
        series: vec![
            s,
            Series::new("sgd", vec![(0.0, 0.0), (1.0, 1e-3)]).markers(),
        ],
    };
    let d = tmp("plot-errbars");
    c.save(&d.join("q.png")).unwrap();
    let img = decode(&d.join("q.png"));
    assert_eq!(img.dimensions(), (1000, 600));
    assert!(count_near(&img, pal(0), 0) > 100);
    assert!(count_near(&img, pal(1), 0) > 20);
}

#[test]
fn bar_chart_png_svg_and_length_check() {
    let d = tmp("plot-bars");
    let c = BarChart {
        axes: Axes::new("L-inf bound", "rotation", "C").size(500, 300),
        categories: ["none", "output", "global"].map(String::from).to_vec(),
        groups: vec![
            BarGroup {
                label: "seed mean".into(),
                values: vec![1.0, 2.0, 3.5],
                errors: Some(vec![0.1, 0.3, 0.2]),
            },
            BarGroup {
                label: "other".into(),
                values: vec![0.5, 1.5, 2.5],
                errors: None,
            },
        ],
    };
    let (png, svg) = c.save_png_svg(&d.join("bars")).unwrap();
    let img = decode(&png);
    assert_eq!(img.dimensions(), (500, 300));
    assert!(count_near(&img, pal(0), 0) > 500, "bars of group 0 missing");
    assert!(count_near(&img, pal(1), 0) > 500, "bars of group 1 missing");
    let text = std::fs::read_to_string(svg).unwrap();
    for label in ["none", "output", "global", "seed mean", "other"] {
        assert!(text.contains(label), "SVG lacks {label:?}");
    }
    let mut bad = c.clone();
    bad.groups[1].values.pop();
    let e = bad.save(&d.join("bad.png")).unwrap_err().to_string();
    assert!(e.contains("2 values for 3 categories"), "{e}");
}

#[test]
fn bad_paths_name_the_path() {
    let d = tmp("plot-badpath");
    let c = loss_chart();
    let missing = d.join("no/such/dir/fig.png");
    let e = c.save(&missing).unwrap_err().to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    let wrong = d.join("fig.jpg");
    let e = c.save(&wrong).unwrap_err().to_string();
    assert!(
        e.contains(&wrong.display().to_string()) && e.contains(".png"),
        "{e}"
    );
    assert!(!wrong.exists());
    // A directory in the way of the file.
    let dir_in_way = d.join("taken.png");
    std::fs::create_dir_all(&dir_in_way).unwrap();
    let e = c.save(&dir_in_way).unwrap_err().to_string();
    assert!(e.contains(&dir_in_way.display().to_string()), "{e}");
    let mut tiny = c.clone();
    tiny.axes.size = (10, 10);
    let e = tiny.save(&d.join("t.png")).unwrap_err().to_string();
    assert!(e.contains("t.png") && e.contains("10x10"), "{e}");
    // No temporary files are left behind.
    let left: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn downsample_keeps_each_column_maximum() {
    let mut rng = Rng::new(7);
    for &(n, cols) in &[
        (1000usize, 7usize),
        (997, 100),
        (5, 10),
        (1, 1),
        (12345, 1000),
        (64, 64),
    ] {
        let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let got = downsample_max_abs(&v, cols);
        let m = cols.min(n);
        assert_eq!(got.len(), m);
        // Brute force: assign every index to its column by the defining inequality.
        let mut want = vec![0.0f64; m];
        for (i, x) in v.iter().enumerate() {
            let c = (0..m)
                .find(|&c| column_start(c, n, m) <= i && i < column_start(c + 1, n, m))
                .unwrap();
            want[c] = want[c].max(x.abs());
        }
        assert_eq!(got, want, "n={n} cols={cols}");
        // Columns partition the indices, each non-empty.
        assert_eq!(column_start(0, n, m), 0);
        assert_eq!(column_start(m, n, m), n);
        assert!((0..m).all(|c| column_start(c, n, m) < column_start(c + 1, n, m)));
    }
    assert!(downsample_max_abs::<f64>(&[], 10).is_empty());
    let f: Vec<f32> = vec![1.0, -3.0, 2.0, f32::NAN];
    assert_eq!(downsample_max_abs(&f, 2), vec![3.0, 2.0]);
}

#[test]
fn row_plot_shows_an_isolated_spike() {
    // 10⁶ small values and ONE large spike: max-|v| downsampling must carry it to the top of the plot.
    let n = 1_000_000;
    let mut rng = Rng::new(3);
    let mut v: Vec<f32> = (0..n).map(|_| 0.01 * rng.normal() as f32).collect();
    v[654_321] = -5.0;
    let markers: Vec<Marker> = (0..4)
        .map(|l| Marker {
            x: (l * n / 4) as f64,
            label: format!("layer {l}"),
        })
        .collect();
    let plot = RowPlot {
        axes: Axes::new("Hessian row", "parameter index", "|H_ij|").size(800, 400),
        values: RowValues::F32(&v),
        markers,
    };
    let d = tmp("plot-row");
    let (png, svg) = plot.save_png_svg(&d.join("row")).unwrap();
    let img = decode(&png);
    assert_eq!(img.dimensions(), (800, 400));
    // The spike reaches the top fifth of the image (the axis top is 5% above it).
    let top: usize = (0..80)
        .flat_map(|y| (0..800).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0 == pal(0))
        .count();
    assert!(top > 0, "the spike is not drawn");
    let text = std::fs::read_to_string(svg).unwrap();
    for l in 0..4 {
        assert!(
            text.contains(&format!("layer {l}")),
            "marker label {l} missing"
        );
    }
    // Log scale also renders.
    let mut log = plot.clone();
    log.axes = log.axes.log_y();
    log.save(&d.join("row_log.png")).unwrap();
    assert_eq!(decode(&d.join("row_log.png")).dimensions(), (800, 400));
}

#[test]
fn aggregate_statistics() {
    let runs = vec![
        vec![(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)],
        vec![(0.0, 3.0), (1.0, 4.0)],
    ];
    let s = aggregate(&runs);
    assert_eq!(s.len(), 2, "x = 2 is not in every run");
    assert_eq!(s[0].mean, 2.0);
    assert_eq!(s[0].min, 1.0);
    assert_eq!(s[0].max, 3.0);
    assert!((s[0].std - 2f64.sqrt()).abs() < 1e-15);
    assert_eq!(s[1].n, 2);
    assert_eq!(aggregate(&[vec![(0.0, 5.0)]])[0].std, 0.0);
    assert!(aggregate(&[]).is_empty());
}

#[test]
fn categorical_x_axis_shows_the_names() {
    let mut axes = Axes::new("by theta", "θ", "loss").log_y();
    axes.x_categories = ["0", "0.01", "0.3", "10"].map(String::from).to_vec();
    let c = LineChart {
        axes,
        series: vec![
            Series::new("adam", (0..4).map(|i| (i as f64, 10f64.powi(-i))).collect()).markers(),
        ],
    };
    let d = tmp("plot-cats");
    let (png, svg) = c.save_png_svg(&d.join("c")).unwrap();
    assert!(count_near(&decode(&png), pal(0), 0) > 50);
    let texts = svg_texts(&std::fs::read_to_string(svg).unwrap());
    for name in ["0", "0.01", "0.3", "10"] {
        assert!(
            texts.iter().any(|t| t == name),
            "tick {name:?} missing: {texts:?}"
        );
    }
    // Only the category names label the x axis: no fractional positions such as "0.5".
    assert!(!texts.iter().any(|t| t == "0.5" || t == "1.5"), "{texts:?}");
}

#[test]
fn empty_and_degenerate_inputs_still_render() {
    let d = tmp("plot-empty");
    LineChart::default().save(&d.join("lines.png")).unwrap();
    let flat = LineChart {
        axes: Axes::new("flat", "x", "y").log_y(),
        series: vec![
            Series::new("const", vec![(1.0, 5.0), (1.0, 5.0)]),
            Series::new("nan", vec![(0.0, f64::NAN)]),
        ],
    };
    flat.save(&d.join("flat.svg")).unwrap();
    BarChart::default().save(&d.join("bars.png")).unwrap();
    let empty: [f64; 0] = [];
    RowPlot {
        axes: Axes::default(),
        values: RowValues::F64(&empty),
        markers: vec![],
    }
    .save(&d.join("row.png"))
    .unwrap();
    for f in ["lines.png", "bars.png", "row.png"] {
        assert_eq!(decode(&d.join(f)).dimensions(), (1000, 600), "{f}");
    }
}

// ---- ticks, lone points, output names, `rotadam plot` -----------------------------------------------

/// The significant digits of a tick label: "8.318" → 4, "6.0" → 1, "0.05" → 1, "100" → 1, "2.5e-4" → 2.
fn significant_digits(label: &str) -> usize {
    let mantissa = label
        .trim_start_matches('-')
        .split(['e', 'E'])
        .next()
        .unwrap();
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    digits
        .trim_start_matches('0')
        .trim_end_matches('0')
        .len()
        .max(1)
}

/// The SVG's texts that are numbers (tick labels), as (text, value).
fn numeric_texts(svg: &str) -> Vec<(String, f64)> {
    svg_texts(svg)
        .into_iter()
        .filter_map(|t| t.parse::<f64>().ok().map(|v| (t, v)))
        .collect()
}

#[test]
fn axis_ticks_are_round_numbers_inside_the_range() {
    assert_eq!(significant_digits("8.318"), 4);
    assert_eq!(significant_digits("6.0"), 1);
    assert_eq!(significant_digits("2.5e-4"), 2);
    let ranges: &[(f64, f64)] = &[
        // loss curves on a log axis: narrower than a decade (the old ticks were 10^0.92 = 8.318, …)
        (7.9, 20.5),
        (8.2, 8.9),
        (5.2, 8.9),
        (3.05, 3.4),
        (2.4, 11.0),
        (0.93, 1.07),
        // a decade or more
        (1.0, 10.0),
        (1.0, 100.0),
        (3.0, 900.0),
        (1e-4, 10.0),
        (1e-12, 1e12),
        (2e-7, 3e-6),
        (1e5, 3e8),
    ];
    for scale in [Scale::Log, Scale::Linear] {
        for &(lo, hi) in ranges {
            let ticks = axis_ticks(lo, hi, scale);
            let what = format!("{scale:?} {lo}..{hi}: {ticks:?}");
            assert!(ticks.len() >= 2, "fewer than 2 ticks: {what}");
            assert!(ticks.len() <= 11, "too many ticks: {what}");
            let tol = 1e-9 * (hi - lo);
            for (v, label) in &ticks {
                assert!(*v >= lo - tol && *v <= hi + tol, "tick {v} outside: {what}");
                assert!(significant_digits(label) <= 3, "label {label:?}: {what}");
                let parsed: f64 = label
                    .parse()
                    .unwrap_or_else(|_| panic!("{label:?}: {what}"));
                assert!(
                    (parsed - v).abs() <= 1e-9 * v.abs().max(hi - lo),
                    "label {label:?} is not the tick {v}: {what}"
                );
            }
            // increasing, so the labels are distinct
            assert!(ticks.windows(2).all(|w| w[0].0 < w[1].0), "{what}");
            let labels: HashSet<&String> = ticks.iter().map(|t| &t.1).collect();
            assert_eq!(labels.len(), ticks.len(), "repeated label: {what}");
        }
    }
    let labels = |lo, hi, scale| -> Vec<String> {
        axis_ticks(lo, hi, scale).into_iter().map(|t| t.1).collect()
    };
    // A log axis over decades: powers of ten; over one decade: 1-2-5; narrower: linear steps.
    assert_eq!(
        labels(1e-4, 10.0, Scale::Log),
        ["1e-4", "0.001", "0.01", "0.1", "1", "10"]
    );
    assert_eq!(labels(1.0, 10.0, Scale::Log), ["1", "2", "5", "10"]);
    assert_eq!(
        labels(5.2, 8.9, Scale::Log),
        ["5.5", "6.0", "6.5", "7.0", "7.5", "8.0", "8.5"]
    );
    // More than ten decades: every second power.
    let wide = labels(1e-12, 1e12, Scale::Log);
    assert!(
        wide.len() <= 10 && wide.contains(&"1".to_string()),
        "{wide:?}"
    );
    // A degenerate or impossible range has no ticks rather than a panic.
    assert!(axis_ticks(3.0, 3.0, Scale::Linear).is_empty());
    assert!(axis_ticks(-1.0, 3.0, Scale::Log).is_empty());
}

#[test]
fn log_axis_tick_labels_in_a_figure_are_round() {
    // Losses from 8.2 to 20: the log axis is padded, not whole decades, and its ticks used to be
    // logarithmically spaced fractions (8.318, 8.511, …).
    let c = LineChart {
        axes: Axes::new("val", "step", "loss").log_y(),
        series: vec![Series::new("run", curve(12.0, 8.0))],
    };
    let d = tmp("plot-logticks");
    let (_, svg) = c.save_png_svg(&d.join("log")).unwrap();
    let texts = numeric_texts(&std::fs::read_to_string(svg).unwrap());
    let ys: Vec<&(String, f64)> = texts.iter().filter(|t| t.1 >= 8.0 && t.1 <= 21.0).collect();
    assert!(ys.len() >= 2, "too few y ticks: {texts:?}");
    for (t, _) in &texts {
        assert!(significant_digits(t) <= 3, "tick label {t:?} in {texts:?}");
    }
}

#[test]
fn a_lone_point_is_drawn_on_non_degenerate_axes() {
    let d = tmp("plot-lone");
    for log in [false, true] {
        let mut axes = Axes::new("one evaluation", "step", "val loss").size(400, 300);
        if log {
            axes = axes.log_y();
        }
        // No label: no legend swatch in the series' colour, so any such pixel is the point itself.
        let c = LineChart {
            axes,
            series: vec![Series::new("", vec![(250.0, 6.2)])],
        };
        let (png, svg) = c.save_png_svg(&d.join(format!("lone-{log}"))).unwrap();
        let n = count_near(&decode(&png), pal(0), 0);
        assert!(n >= 20, "log {log}: the lone point covers {n} pixels");
        // Both axes span a range around the point: at least two distinct ticks each, around 250 and 6.2.
        let texts = numeric_texts(&std::fs::read_to_string(svg).unwrap());
        let (xs, ys): (Vec<f64>, Vec<f64>) = texts.iter().map(|t| t.1).partition(|&v| v > 100.0);
        assert!(
            xs.len() >= 2 && xs.iter().any(|&x| x < 250.0) && xs.iter().any(|&x| x > 250.0),
            "{texts:?}"
        );
        assert!(
            ys.len() >= 2 && ys.iter().any(|&y| y < 6.2) && ys.iter().any(|&y| y > 6.2),
            "{texts:?}"
        );
    }
}

/// A run directory with a metrics.jsonl of `rows` (step, train loss, val loss) followed by `tail`.
fn run_dir(dir: &Path, rows: &[(usize, f64, Option<f64>)], tail: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::new();
    for &(step, train, val) in rows {
        let mut row = serde_json::json!({
            "step": step, "train_loss": train, "lr": 6e-4, "grad_norm": 1.0,
            "tokens_per_s": 1000.0, "ms_per_step": 10.0, "optimizer": "adamw", "rotation": "none",
        });
        if let Some(v) = val {
            row["val_loss"] = v.into();
        }
        text.push_str(&format!("{row}\n"));
    }
    text.push_str(tail);
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    dir.to_path_buf()
}

fn plot_options(runs: Vec<PathBuf>, out: PathBuf) -> PlotOptions {
    PlotOptions {
        runs,
        out,
        metric: Metric::Val,
        ema: 0.0,
        log_y: false,
        title: "loss curves".into(),
    }
}

#[test]
fn out_ending_in_png_or_svg_is_not_doubled() {
    let d = tmp("plot-out-ext");
    assert_eq!(figure_stem(Path::new("a/y.png")), Path::new("a/y"));
    assert_eq!(figure_stem(Path::new("y.SVG")), Path::new("y"));
    assert_eq!(figure_stem(Path::new("loss.v2")), Path::new("loss.v2"));
    assert_eq!(figure_stem(Path::new(".png")), Path::new(".png"));
    let run = run_dir(
        &d.join("run"),
        &[(0, 9.0, Some(9.5)), (10, 7.0, Some(7.5))],
        "",
    );
    for (out, png, svg) in [
        ("y.png", "y.png", "y.svg"),
        ("z.svg", "z.png", "z.svg"),
        ("w", "w.png", "w.svg"),
        ("loss.v2", "loss.v2.png", "loss.v2.svg"),
    ] {
        let got = plot_runs::run(&plot_options(vec![run.clone()], d.join(out))).unwrap();
        assert_eq!(got, (d.join(png), d.join(svg)), "--out {out}");
        assert_eq!(decode(&got.0).dimensions(), (1000, 600));
        assert!(std::fs::read_to_string(&got.1).unwrap().contains("</svg>"));
    }
    for doubled in ["y.png.png", "y.png.svg", "z.svg.png", "z.svg.svg"] {
        assert!(!d.join(doubled).exists(), "{doubled} written");
    }
    // The figures' own save_png_svg takes such a stem as well.
    let (png, svg) = loss_chart().save_png_svg(&d.join("chart.png")).unwrap();
    assert_eq!((png, svg), (d.join("chart.png"), d.join("chart.svg")));
}

#[test]
fn plot_of_a_run_with_one_evaluation_shows_the_point() {
    let d = tmp("plot-one-eval");
    let run = run_dir(
        &d.join("run"),
        &[(0, 10.0, None), (1, 9.0, None), (2, 8.0, Some(8.5))],
        "",
    );
    let (_, svg) = plot_runs::run(&plot_options(vec![run], d.join("one"))).unwrap();
    let text = std::fs::read_to_string(svg).unwrap();
    assert!(
        text.contains("<circle"),
        "no marker for the lone evaluation"
    );
}

#[test]
fn plot_survives_a_torn_last_metrics_line() {
    // A crash or a full disk can cut the last row of metrics.jsonl short: the rows before it still plot.
    let d = tmp("plot-torn");
    let rows: Vec<(usize, f64, Option<f64>)> = (0..20)
        .map(|i| {
            (
                i * 10,
                10.0 - 0.2 * i as f64,
                (i % 5 == 4).then_some(9.0 - 0.2 * i as f64),
            )
        })
        .collect();
    let run = run_dir(
        &d.join("run"),
        &rows,
        "{\"step\":200,\"train_loss\":6.0,\"lr\":0.0",
    );
    let (png, _) = plot_runs::run(&plot_options(vec![run], d.join("torn"))).unwrap();
    assert!(count_near(&decode(&png), pal(0), 0) > 50);
}

#[test]
fn plot_errors_name_each_path_once() {
    let d = tmp("plot-errors");
    // A run directory without metrics.jsonl: the directory, then the file it lacks, once each.
    let missing = d.join("not-a-run");
    std::fs::create_dir_all(&missing).unwrap();
    let e = plot_runs::run(&plot_options(vec![missing.clone()], d.join("x")))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert_eq!(e.matches("metrics.jsonl").count(), 1, "{e}");
    // A figure in a directory that does not exist: that directory is named once (the path includes it).
    let dir = d.join("no/such/dir");
    let e = loss_chart()
        .save(&dir.join("fig.png"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&dir.join("fig.png").display().to_string()),
        "{e}"
    );
    assert_eq!(e.matches(&dir.display().to_string()).count(), 1, "{e}");
}
