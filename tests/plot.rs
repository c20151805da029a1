//! Figures: PNGs decode at the requested size and show the series' colours, SVGs carry the legend labels,
//! bad paths are errors naming the path, and the max-|v| downsampling keeps every column's maximum.

use crate::util::tmp;
use rotadam::plot::{
    aggregate, column_start, downsample_max_abs, Axes, BarChart, BarGroup, LineChart, Marker,
    RowPlot, RowValues, Series, Spread, PALETTE,
};
use rotadam::rng::Rng;
use std::collections::HashSet;

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
