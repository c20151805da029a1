//! Figures as PNG and SVG: line charts with shaded bands or error bars, bar charts with error bars, and
//! long rows of magnitudes over a parameter index with marked positions.
//!
//! One small API serves every figure of the project:
//! - [`LineChart`]: several [`Series`], each a line with an optional [`Spread`] (a shaded band, e.g.
//!   min–max over seeds as in Maes et al. Fig. 3, or error bars, e.g. mean ± std), optional point
//!   markers, dashed or solid, a legend; linear or log y ([`Scale`]). Loss curves of runs, sweeps, and the
//!   quadratic experiment's final loss against θ.
//! - [`BarChart`]: categories on x, one or more groups of bars side by side, optional ± error bars
//!   (per-rotation diagnostics, Maes et al. Figs. 7, 8, 10).
//! - [`RowPlot`]: a row of up to ~10⁸ values drawn as magnitudes |v| over the index, downsampled to the
//!   plot's pixel width by the maximum |v| of each pixel column ([`downsample_max_abs`]), with vertical
//!   markers and labels at given positions (layer boundaries; Maes et al. Fig. 7).
//!
//! Every figure has `save(path)`: the format is chosen by the extension (`.png` or `.svg`; anything else
//! is an error naming the path), the image is rendered in memory and written through a temporary file
//! that is renamed into place ([`crate::files::write_atomic`]). `save_png_svg(stem)` writes both
//! (`stem.png` and `stem.svg`; a stem that already ends in `.png` or `.svg` loses that extension first).
//!
//! Text is rendered with the vendored DejaVu Sans (`assets/fonts/`, Bitstream Vera licence), registered
//! once as plotters' "sans-serif" through `ab_glyph`, so PNGs need no system fonts. A log axis is drawn as
//! a linear axis over log₁₀(y); values ≤ 0 (and the lower ends of bands or error bars that reach ≤ 0) are
//! clamped to the bottom of the axis. Non-finite values are skipped. The y ticks of every figure are
//! round data values ([`axis_ticks`]: 1-2-5 steps, or powers of ten on a log axis over decades). An
//! axis over a single value is widened around it, and a series with one point is drawn as a marker.

use crate::error::{Error, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// The default figure size in pixels (width, height).
pub const DEFAULT_SIZE: (u32, u32) = (1000, 600);

/// The vendored font (DejaVu Sans 2.37; licence in `assets/fonts/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// The colours of series/groups, in order (matplotlib's "tab10"); index i uses `PALETTE[i % 10]`.
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn palette(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// Register the vendored font with plotters once per process.
fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the vendored DejaVuSans.ttf is a valid font"));
    });
}

/// Linear or logarithmic (base 10) y axis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scale {
    #[default]
    Linear,
    Log,
}

/// What every figure has: title, axis labels, y scale and size in pixels.
#[derive(Clone, Debug)]
pub struct Axes {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub y_scale: Scale,
    /// (width, height) in pixels; both must be in 100..=10000.
    pub size: (u32, u32),
    /// Line charts only: when non-empty, x values are indices 0, 1, … into these names and the x ticks
    /// show the names (e.g. θ values that include 0 and span decades).
    pub x_categories: Vec<String>,
}

impl Default for Axes {
    fn default() -> Self {
        Axes {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            y_scale: Scale::Linear,
            size: DEFAULT_SIZE,
            x_categories: Vec::new(),
        }
    }
}

impl Axes {
    /// Axes with a title and axis labels, linear y, [`DEFAULT_SIZE`].
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        Axes {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            ..Default::default()
        }
    }
    /// The same axes with a log y scale.
    pub fn log_y(mut self) -> Self {
        self.y_scale = Scale::Log;
        self
    }
    /// The same axes with another size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }
}

/// The spread drawn around a series: points (x, lo, hi).
#[derive(Clone, Debug, PartialEq)]
pub enum Spread {
    /// A shaded band between lo and hi (the series colour at 20% opacity).
    Band(Vec<(f64, f64, f64)>),
    /// A vertical error bar from lo to hi at each x.
    ErrorBars(Vec<(f64, f64, f64)>),
}

/// One line of a [`LineChart`].
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text; an empty label puts no legend entry.
    pub label: String,
    /// (x, y) points, drawn in the given order.
    pub points: Vec<(f64, f64)>,
    pub spread: Option<Spread>,
    /// Palette index; `None` = the series' position in the chart.
    pub color: Option<usize>,
    pub dashed: bool,
    /// Draw a filled circle at each point (a series with a single drawable point always gets one).
    pub markers: bool,
}

impl Series {
    /// A solid line without spread or markers.
    pub fn new(label: &str, points: Vec<(f64, f64)>) -> Self {
        Series {
            label: label.into(),
            points,
            spread: None,
            color: None,
            dashed: false,
            markers: false,
        }
    }
    /// The mean over runs with a band from the minimum to the maximum (see [`aggregate`]).
    pub fn mean_min_max(label: &str, stats: &[Stat]) -> Self {
        let mut s = Series::new(label, stats.iter().map(|s| (s.x, s.mean)).collect());
        s.spread = Some(Spread::Band(
            stats.iter().map(|s| (s.x, s.min, s.max)).collect(),
        ));
        s
    }
    /// The mean over runs with error bars at mean ± std, and markers (see [`aggregate`]).
    pub fn mean_std_bars(label: &str, stats: &[Stat]) -> Self {
        let mut s = Series::new(label, stats.iter().map(|s| (s.x, s.mean)).collect());
        s.spread = Some(Spread::ErrorBars(
            stats
                .iter()
                .map(|s| (s.x, s.mean - s.std, s.mean + s.std))
                .collect(),
        ));
        s.markers = true;
        s
    }
    /// Use palette colour `i`.
    pub fn color(mut self, i: usize) -> Self {
        self.color = Some(i);
        self
    }
    /// Draw dashed.
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
    /// Draw a marker at each point.
    pub fn markers(mut self) -> Self {
        self.markers = true;
        self
    }
}

/// Statistics of several runs at one x: mean, sample standard deviation (n − 1 in the denominator; 0 for
/// one run), minimum and maximum over runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub x: f64,
    pub n: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

/// Mean and sample standard deviation (n − 1; 0 for one value; NaN for none).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Aggregate several runs' curves (e.g. one per seed) at the x values that every run has (exact
/// equality, as steps are), in the order of the first run. Returns an empty vector for no runs.
pub fn aggregate(runs: &[Vec<(f64, f64)>]) -> Vec<Stat> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for &(x, _) in first {
        let ys: Option<Vec<f64>> = runs
            .iter()
            .map(|r| r.iter().find(|p| p.0 == x).map(|p| p.1))
            .collect();
        let Some(ys) = ys else { continue };
        let (mean, std) = mean_std(&ys);
        out.push(Stat {
            x,
            n: ys.len(),
            mean,
            std,
            min: ys.iter().cloned().fold(f64::INFINITY, f64::min),
            max: ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        });
    }
    out
}

/// Lines over a common x axis, each with an optional band or error bars, and a legend.
#[derive(Clone, Debug, Default)]
pub struct LineChart {
    pub axes: Axes,
    pub series: Vec<Series>,
}

/// One group of bars (one bar per category), drawn side by side with the other groups.
#[derive(Clone, Debug, PartialEq)]
pub struct BarGroup {
    /// Legend text (no legend when the chart has one group with an empty label).
    pub label: String,
    /// One value per category.
    pub values: Vec<f64>,
    /// Optional ± half-widths of error bars, one per category.
    pub errors: Option<Vec<f64>>,
}

/// Bars over named categories (x), optionally grouped and with error bars.
#[derive(Clone, Debug, Default)]
pub struct BarChart {
    pub axes: Axes,
    pub categories: Vec<String>,
    pub groups: Vec<BarGroup>,
}

/// The values of a [`RowPlot`], borrowed (a row may have 10⁸ entries).
#[derive(Clone, Copy, Debug)]
pub enum RowValues<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl RowValues<'_> {
    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            RowValues::F32(v) => v.len(),
            RowValues::F64(v) => v.len(),
        }
    }
    /// Whether the row is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn downsample(&self, columns: usize) -> Vec<f64> {
        match self {
            RowValues::F32(v) => downsample_max_abs(v, columns),
            RowValues::F64(v) => downsample_max_abs(v, columns),
        }
    }
}

/// A vertical marker at index `x` with a label (e.g. the first index of a layer).
#[derive(Clone, Debug, PartialEq)]
pub struct Marker {
    pub x: f64,
    pub label: String,
}

/// A long row of values drawn as magnitudes |v_i| over the index i (filled envelope), with markers.
#[derive(Clone, Debug)]
pub struct RowPlot<'a> {
    pub axes: Axes,
    pub values: RowValues<'a>,
    pub markers: Vec<Marker>,
}

/// The first index of pixel column `c` when `n` values are spread over `columns` columns:
/// ⌊c·n / columns⌋. Column c covers [start(c), start(c + 1)).
pub fn column_start(c: usize, n: usize, columns: usize) -> usize {
    ((c as u128 * n as u128) / columns as u128) as usize
}

/// Downsample a row to at most `columns` values by the maximum magnitude per column: with n values and
/// m = min(n, columns) columns, column c holds max{|v_i| : ⌊c·n/m⌋ ≤ i < ⌊(c+1)·n/m⌋}, so no peak is lost
/// however many values share a pixel (a mean or a stride would hide isolated spikes). NaN entries are
/// skipped (a column of NaNs only gives 0). Returns m values; `columns = 0` gives none.
pub fn downsample_max_abs<T: Copy + Into<f64>>(values: &[T], columns: usize) -> Vec<f64> {
    let n = values.len();
    let m = columns.min(n);
    (0..m)
        .map(|c| {
            values[column_start(c, n, m)..column_start(c + 1, n, m)]
                .iter()
                .map(|&v| v.into().abs())
                .fold(0.0, |a: f64, b| if b > a { b } else { a })
        })
        .collect()
}

impl LineChart {
    /// Render to `path` (`.png` or `.svg`), written atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        save_fig(Fig::Lines(self), &self.axes, path)
    }
    /// Write `stem.png` and `stem.svg` (a `stem` ending in `.png` or `.svg` loses it first, see
    /// [`figure_stem`]); returns their paths.
    pub fn save_png_svg(&self, stem: &Path) -> Result<(PathBuf, PathBuf)> {
        save_both(Fig::Lines(self), &self.axes, stem)
    }
}

impl BarChart {
    /// Render to `path` (`.png` or `.svg`), written atomically. Every group must have one value (and one
    /// error, if any) per category.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.check()?;
        save_fig(Fig::Bars(self), &self.axes, path)
    }
    /// Write `stem.png` and `stem.svg` (a `stem` ending in `.png` or `.svg` loses it first, see
    /// [`figure_stem`]); returns their paths.
    pub fn save_png_svg(&self, stem: &Path) -> Result<(PathBuf, PathBuf)> {
        self.check()?;
        save_both(Fig::Bars(self), &self.axes, stem)
    }
    fn check(&self) -> Result<()> {
        let n = self.categories.len();
        for g in &self.groups {
            if g.values.len() != n {
                return Err(Error::config(
                    "bar chart",
                    format!(
                        "group {:?} has {} values for {n} categories",
                        g.label,
                        g.values.len()
                    ),
                ));
            }
            if let Some(e) = &g.errors {
                if e.len() != n {
                    return Err(Error::config(
                        "bar chart",
                        format!(
                            "group {:?} has {} errors for {n} categories",
                            g.label,
                            e.len()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl RowPlot<'_> {
    /// Render to `path` (`.png` or `.svg`), written atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        save_fig(Fig::Row(self), &self.axes, path)
    }
    /// Write `stem.png` and `stem.svg` (a `stem` ending in `.png` or `.svg` loses it first, see
    /// [`figure_stem`]); returns their paths.
    pub fn save_png_svg(&self, stem: &Path) -> Result<(PathBuf, PathBuf)> {
        save_both(Fig::Row(self), &self.axes, stem)
    }
}

#[derive(Clone, Copy)]
enum Fig<'a> {
    Lines(&'a LineChart),
    Bars(&'a BarChart),
    Row(&'a RowPlot<'a>),
}

fn save_both(fig: Fig, axes: &Axes, stem: &Path) -> Result<(PathBuf, PathBuf)> {
    let stem = figure_stem(stem);
    let png = append_ext(&stem, "png");
    let svg = append_ext(&stem, "svg");
    save_fig(fig, axes, &png)?;
    save_fig(fig, axes, &svg)?;
    Ok((png, svg))
}

/// `path` without a final `.png` or `.svg` (in any case): the stem [`LineChart::save_png_svg`] and the
/// other figures' `save_png_svg` add both extensions to, so that `fig.png` names `fig.png` and `fig.svg`
/// (not `fig.png.png`). Other extensions stay: `loss.v2` writes `loss.v2.png` and `loss.v2.svg`.
pub fn figure_stem(path: &Path) -> PathBuf {
    let is_figure = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png") || e.eq_ignore_ascii_case("svg"));
    if is_figure {
        path.with_extension("")
    } else {
        path.to_path_buf()
    }
}

fn append_ext(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn save_fig(fig: Fig, axes: &Axes, path: &Path) -> Result<()> {
    let (w, h) = axes.size;
    if !(100..=10_000).contains(&w) || !(100..=10_000).contains(&h) {
        return Err(Error::bad_file(
            path,
            "size",
            format!("{w}x{h} pixels; expected width and height in 100..=10000"),
        ));
    }
    ensure_font();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    let bytes = match ext.as_deref() {
        Some("png") => render_png(&fig, axes),
        Some("svg") => render_svg(&fig, axes),
        _ => {
            return Err(Error::bad_file(
                path,
                "extension",
                "expected a .png or .svg file name",
            ))
        }
    }
    .map_err(|msg| Error::bad_file(path, "figure", msg))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            // The message names the path once: the directory is its parent.
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "its directory does not exist"),
            ));
        }
    }
    if path.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
        ));
    }
    // write_atomic names its temporary file on failure; name the figure's own path instead.
    crate::files::write_atomic(path, &bytes).map_err(|e| match e {
        Error::Io { source, .. } => Error::io(path, source),
        other => other,
    })
}

fn render_png(fig: &Fig, axes: &Axes) -> std::result::Result<Vec<u8>, String> {
    use plotters::prelude::BitMapBackend;
    let (w, h) = axes.size;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(fig, &root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &rgb,
        w,
        h,
        image::ColorType::Rgb8,
    )
    .map_err(|e| format!("PNG encoding: {e}"))?;
    Ok(png)
}

fn render_svg(fig: &Fig, axes: &Axes) -> std::result::Result<Vec<u8>, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, axes.size).into_drawing_area();
        draw(fig, &root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg.into_bytes())
}

fn draw<DB: DrawingBackend>(
    fig: &Fig,
    root: &DrawingArea<DB, Shift>,
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    match fig {
        Fig::Lines(c) => draw_lines(c, root),
        Fig::Bars(c) => draw_bars(c, root),
        Fig::Row(c) => draw_row(c, root),
    }
}

/// Maps data y to axis y (log₁₀ for a log axis) and formats tick labels back in data units.
#[derive(Clone, Copy)]
struct YMap {
    log: bool,
}

impl YMap {
    /// Axis coordinate of a data value; `None` if it cannot be shown (non-finite, or ≤ 0 on a log axis).
    fn to_axis(self, y: f64) -> Option<f64> {
        if !y.is_finite() || (self.log && y <= 0.0) {
            None
        } else if self.log {
            Some(y.log10())
        } else {
            Some(y)
        }
    }
    /// Like `to_axis`, but values that cannot be shown are clamped to `floor` (the axis bottom).
    fn clamp(self, y: f64, floor: f64) -> f64 {
        self.to_axis(y).unwrap_or(floor).max(floor)
    }
    /// The y axis over axis coordinates `y0..y1`, its ticks bound as key points: the ticks of
    /// [`axis_ticks`] for the data range the axis shows, and light grid lines between them.
    fn coord(self, y0: f64, y1: f64) -> (YAxis, TickLabels) {
        let scale = if self.log { Scale::Log } else { Scale::Linear };
        let (lo, hi) = if self.log {
            (10f64.powf(y0), 10f64.powf(y1))
        } else {
            (y0, y1)
        };
        let ticks = tick_set(lo, hi, scale, MAX_Y_TICKS);
        let axis = |v: &f64| self.to_axis(*v);
        let bold: Vec<f64> = ticks.values.iter().filter_map(axis).collect();
        let light: Vec<f64> = ticks.light.iter().filter_map(axis).collect();
        let labels = TickLabels(bold.iter().copied().zip(ticks.labels).collect());
        let axis = YAxis {
            inner: (y0..y1).into(),
            bold,
            light,
        };
        (axis, labels)
    }
}

/// A linear axis (over axis coordinates) whose ticks and light grid lines are given, not chosen by
/// plotters; the labels come from a [`TickLabels`].
struct YAxis {
    inner: RangedCoordf64,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl Ranged for YAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;
    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }
    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }
    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

/// The most y ticks a figure gets.
const MAX_Y_TICKS: usize = 10;

/// The labels of an axis' ticks by their axis coordinate; plotters asks for a label by coordinate.
struct TickLabels(Vec<(f64, String)>);

impl TickLabels {
    /// The label of the tick nearest to axis coordinate `v` ("" when there are none).
    fn at(&self, v: f64) -> String {
        self.0
            .iter()
            .min_by(|a, b| (a.0 - v).abs().total_cmp(&(b.0 - v).abs()))
            .map(|t| t.1.clone())
            .unwrap_or_default()
    }
}

/// The ticks of a y axis over the data range `lo..hi` and their labels; see [`axis_ticks`].
#[derive(Clone, Debug, PartialEq)]
struct TickSet {
    values: Vec<f64>,
    labels: Vec<String>,
    /// Where light grid lines go (between the ticks).
    light: Vec<f64>,
}

/// `m`·10^`e` as the f64 nearest to that decimal (so 3·10⁻¹ is the same number as `0.3`).
fn decimal(m: i64, e: i32) -> f64 {
    format!("{m}e{e}")
        .parse()
        .expect("an integer with an exponent is a valid float")
}

/// Ticks of an axis over the data range `lo..hi` (`lo < hi`; `lo > 0` on a log axis), with their labels.
/// Every tick lies in the range and there are at least two (for any range wider than ~10⁻¹² of its
/// magnitude). The values are round numbers, never logarithmically spaced fractions:
/// - [`Scale::Linear`], or a log axis spanning less than a decade: multiples of the largest step in
///   {1, 2, 5}·10^k that gives at most ten ticks (e.g. 5.5, 6.0, 6.5), labelled with the
///   step's decimals;
/// - a log axis with at least three powers of ten: powers of ten (every second, third, … power when
///   there are more than ten), e.g. 0.001, 0.01, 0.1, 1;
/// - a log axis over one to three decades: {1, 2, 5}·10^k, e.g. 2, 5, 10, 20.
///
/// Labels are short: plain notation for 10⁻³ ≤ |v| < 10⁵, else scientific (`1e-6`, `2.5e6`).
pub fn axis_ticks(lo: f64, hi: f64, scale: Scale) -> Vec<(f64, String)> {
    let t = tick_set(lo, hi, scale, MAX_Y_TICKS);
    t.values.into_iter().zip(t.labels).collect()
}

fn tick_set(lo: f64, hi: f64, scale: Scale, max_ticks: usize) -> TickSet {
    let empty = TickSet {
        values: Vec::new(),
        labels: Vec::new(),
        light: Vec::new(),
    };
    if !(lo.is_finite() && hi.is_finite() && lo < hi) || (scale == Scale::Log && lo <= 0.0) {
        return empty;
    }
    if scale == Scale::Log && hi / lo >= 10.0 {
        if let Some(t) = log_ticks(lo, hi) {
            return t;
        }
    }
    linear_ticks(lo, hi, max_ticks)
}

/// Whether `v` lies in `lo..=hi`, allowing the rounding of the range's ends.
fn in_range(v: f64, lo: f64, hi: f64) -> bool {
    let eps = 1e-9 * (hi - lo).abs().max(lo.abs().max(hi.abs()) * 1e-6);
    v >= lo - eps && v <= hi + eps
}

/// Powers of ten, or {1, 2, 5}·10^k; `None` when neither gives two ticks.
fn log_ticks(lo: f64, hi: f64) -> Option<TickSet> {
    let (e0, e1) = (lo.log10().floor() as i32 - 1, hi.log10().ceil() as i32 + 1);
    let all = |mantissas: &[i64]| -> Vec<(i64, i32)> {
        (e0..=e1)
            .flat_map(|e| mantissas.iter().map(move |&m| (m, e)))
            .filter(|&(m, e)| in_range(decimal(m, e), lo, hi))
            .collect()
    };
    let powers = all(&[1]);
    if powers.len() >= 3 {
        // At most ten labelled powers: every stride-th one, at exponents divisible by the stride.
        let stride = powers.len().div_ceil(MAX_Y_TICKS) as i32;
        let (bold, skipped): (Vec<_>, Vec<_>) = powers
            .iter()
            .partition(|&&(_, e)| e.rem_euclid(stride) == 0);
        let values: Vec<f64> = bold.iter().map(|&&(m, e)| decimal(m, e)).collect();
        let light: Vec<f64> = if stride == 1 {
            all(&[2, 3, 4, 5, 6, 7, 8, 9])
                .into_iter()
                .map(|(m, e)| decimal(m, e))
                .collect()
        } else {
            skipped.iter().map(|&&(m, e)| decimal(m, e)).collect()
        };
        return Some(TickSet {
            labels: values.iter().map(|&v| fmt_num(v)).collect(),
            values,
            light,
        });
    }
    let values: Vec<f64> = all(&[1, 2, 5])
        .into_iter()
        .map(|(m, e)| decimal(m, e))
        .collect();
    if values.len() < 2 {
        return None;
    }
    let light = all(&[3, 4, 6, 7, 8, 9])
        .into_iter()
        .map(|(m, e)| decimal(m, e))
        .collect();
    Some(TickSet {
        labels: values.iter().map(|&v| fmt_num(v)).collect(),
        values,
        light,
    })
}

/// Multiples of the smallest step in {1, 2, 5}·10^k that gives at most `max_ticks` ticks in `lo..=hi`.
fn linear_ticks(lo: f64, hi: f64, max_ticks: usize) -> TickSet {
    let max_ticks = max_ticks.max(2) as f64;
    let mut e = ((hi - lo) / max_ticks).log10().floor() as i32 - 1;
    // The step m·10^e: the first of 1, 2, 5, 10, 20, … whose multiples in the range are few enough.
    let (m, e) = loop {
        let fits = [1i64, 2, 5].into_iter().find(|&m| {
            let step = decimal(m, e);
            ((hi / step).floor() - (lo / step).ceil() + 1.0) <= max_ticks
        });
        match fits {
            Some(m) => break (m, e),
            None => e += 1,
        }
    };
    let step = decimal(m, e);
    let (k0, k1) = (
        (lo / step).ceil() as i64 - 1,
        (hi / step).floor() as i64 + 1,
    );
    let multiples = |k: i64, half: bool| {
        if half {
            // halfway between tick k and k + 1: (2k + 1)·m/2 · 10^e = (2k + 1)·5m · 10^(e−1)
            decimal((2 * k + 1) * 5 * m, e - 1)
        } else {
            decimal(k * m, e)
        }
    };
    let values: Vec<f64> = (k0..=k1)
        .map(|k| multiples(k, false))
        .filter(|&v| in_range(v, lo, hi))
        .collect();
    let light: Vec<f64> = (k0 - 1..=k1)
        .map(|k| multiples(k, true))
        .filter(|&v| in_range(v, lo, hi))
        .collect();
    // Decimals of the step (a step 5·10⁻¹ labels 5.5, 6.0, 6.5); scientific for large or tiny values.
    let top = values.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let labels = values
        .iter()
        .map(|&v| {
            if top == 0.0 || (1e-3..1e5).contains(&top) {
                let decimals = (-e).max(0) as usize;
                let s = format!("{v:.decimals$}");
                // "-0.0" is 0.0
                if s.trim_start_matches('-')
                    .chars()
                    .all(|c| c == '0' || c == '.')
                {
                    s.trim_start_matches('-').to_string()
                } else {
                    s
                }
            } else if v == 0.0 {
                "0".to_string()
            } else {
                let digits = (v.abs().log10().floor() as i32 - e).max(0) as usize;
                trim_sci(&format!("{v:.digits$e}"))
            }
        })
        .collect();
    TickSet {
        values,
        labels,
        light,
    }
}

/// `1.50e-3` → `1.5e-3`, `1.00e5` → `1e5`.
fn trim_sci(s: &str) -> String {
    match s.split_once('e') {
        Some((m, e)) => {
            let m = if m.contains('.') {
                m.trim_end_matches('0').trim_end_matches('.')
            } else {
                m
            };
            format!("{m}e{e}")
        }
        None => s.to_string(),
    }
}

/// A short tick label: 4 significant digits in plain notation for 1e-3 ≤ |v| < 1e5, else scientific.
fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { v.to_string() };
    }
    let a = v.abs();
    if (1e-3..1e5).contains(&a) {
        let digits = (3 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        trim_sci(&format!("{v:.2e}"))
    }
}

/// Whether `lo..hi` (finite) is too narrow to draw: empty, or narrower than 10⁻⁹ of its magnitude (ticks and
/// pixels could not tell its ends apart).
fn degenerate(lo: f64, hi: f64) -> bool {
    hi - lo <= 1e-9 * lo.abs().max(hi.abs()) || hi - lo < 1e-300
}

/// A linear range around `v` for an axis over one value: ±10% of |v| (±1 around 0).
fn around(v: f64) -> (f64, f64) {
    let pad = if v == 0.0 { 1.0 } else { 0.1 * v.abs() };
    (v - pad, v + pad)
}

/// The axis range covering `vals` (axis coordinates): padded by 5% on a linear axis, widened to whole
/// decades on a log axis; a range over one value (or one so narrow its ends cannot be told apart) is
/// widened to ±10% of the value, ±1 around 0 (linear) or ±½ decade (log).
fn axis_range(vals: impl Iterator<Item = f64>, log: bool, include_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = vals
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if include_zero && !log {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if lo > hi {
        return if log { (-1.0, 1.0) } else { (0.0, 1.0) };
    }
    if log {
        if hi - lo < 1e-9 {
            let mid = 0.5 * (lo + hi);
            return (mid - 0.5, mid + 0.5);
        }
        let (flo, chi) = (lo.floor(), hi.ceil());
        // Whole decades unless that more than doubles a narrow span.
        if chi - flo <= 2.0 * (hi - lo) + 1.0 {
            (flo, chi)
        } else {
            let pad = 0.05 * (hi - lo);
            (lo - pad, hi + pad)
        }
    } else {
        if degenerate(lo, hi) {
            return around(0.5 * (lo + hi));
        }
        let pad = 0.05 * (hi - lo);
        let lo = if include_zero && lo == 0.0 {
            0.0
        } else {
            lo - pad
        };
        (lo, hi + pad)
    }
}

/// The x range covering `xs`, unpadded; (0, 1) for none; a single value is widened as in [`axis_range`].
fn x_range(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = xs
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        (0.0, 1.0)
    } else if degenerate(lo, hi) {
        around(0.5 * (lo + hi))
    } else {
        (lo, hi)
    }
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn draw_lines<DB: DrawingBackend>(
    c: &LineChart,
    root: &DrawingArea<DB, Shift>,
) -> std::result::Result<(), String> {
    let ym = YMap {
        log: c.axes.y_scale == Scale::Log,
    };
    let xs = c.series.iter().flat_map(|s| {
        s.points.iter().map(|p| p.0).chain(match &s.spread {
            Some(Spread::Band(b)) | Some(Spread::ErrorBars(b)) => b.iter().map(|p| p.0).collect(),
            None => Vec::new(),
        })
    });
    let cats = &c.axes.x_categories;
    let (x0, x1) = if cats.is_empty() {
        x_range(xs)
    } else {
        (-0.3, cats.len() as f64 - 0.7)
    };
    let ys = c.series.iter().flat_map(|s| {
        let mut v: Vec<f64> = s.points.iter().map(|p| p.1).collect();
        if let Some(Spread::Band(b)) | Some(Spread::ErrorBars(b)) = &s.spread {
            v.extend(b.iter().flat_map(|p| [p.1, p.2]));
        }
        v.into_iter().filter_map(|y| ym.to_axis(y))
    });
    let (y0, y1) = axis_range(ys, ym.log, false);

    let (y_coord, y_labels) = ym.coord(y0, y1);
    let mut chart = ChartBuilder::on(root)
        .caption(&c.axes.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y_coord)
        .map_err(err)?;
    let yfmt = |v: &f64| y_labels.at(*v);
    let xfmt = |v: &f64| {
        if cats.is_empty() {
            fmt_num(*v)
        } else {
            category_label(cats, *v)
        }
    };
    let n_x_labels = if cats.is_empty() { 10 } else { cats.len() + 2 };
    chart
        .configure_mesh()
        .x_labels(n_x_labels)
        .x_desc(&c.axes.x_label)
        .y_desc(&c.axes.y_label)
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .label_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
        .max_light_lines(2)
        .draw()
        .map_err(err)?;

    let mut any_label = false;
    for (i, s) in c.series.iter().enumerate() {
        let color = palette(s.color.unwrap_or(i));
        match &s.spread {
            Some(Spread::Band(b)) => {
                let pts: Vec<(f64, f64, f64)> = b
                    .iter()
                    .filter(|p| p.0.is_finite())
                    .map(|&(x, lo, hi)| (x, ym.clamp(lo, y0), ym.clamp(hi, y0)))
                    .collect();
                let poly: Vec<(f64, f64)> = pts
                    .iter()
                    .map(|p| (p.0, p.2))
                    .chain(pts.iter().rev().map(|p| (p.0, p.1)))
                    .collect();
                if poly.len() >= 3 {
                    chart
                        .draw_series(std::iter::once(Polygon::new(poly, color.mix(0.2).filled())))
                        .map_err(err)?;
                }
            }
            Some(Spread::ErrorBars(b)) => {
                chart
                    .draw_series(b.iter().filter(|p| p.0.is_finite()).map(|&(x, lo, hi)| {
                        let (lo, hi) = (ym.clamp(lo, y0), ym.clamp(hi, y0));
                        // The bar's dot sits on the series' own point at this x (the mean), not at
                        // the middle of lo..hi, which differs on a log axis.
                        let mid = s
                            .points
                            .iter()
                            .find(|p| p.0 == x)
                            .and_then(|p| ym.to_axis(p.1))
                            .unwrap_or(0.5 * (lo + hi))
                            .clamp(lo.min(hi), hi.max(lo));
                        ErrorBar::new_vertical(x, lo, mid, hi, color.stroke_width(2), 8)
                    }))
                    .map_err(err)?;
            }
            None => {}
        }
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite())
            .filter_map(|&(x, y)| ym.to_axis(y).map(|y| (x, y)))
            .collect();
        let style = color.stroke_width(2);
        let ann = if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))
                .map_err(err)?
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(err)?
        };
        if !s.label.is_empty() {
            any_label = true;
            let dashed = s.dashed;
            ann.label(&s.label).legend(move |(x, y)| {
                let seg = if dashed {
                    vec![(x, y), (x + 8, y)]
                } else {
                    vec![(x, y), (x + 20, y)]
                };
                PathElement::new(seg, color.stroke_width(2))
            });
        }
        // A lone point draws no line: it gets a marker whatever `markers` says.
        if s.markers || pts.len() == 1 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(err)?;
        }
    }
    if any_label {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(legend_corner(c, ym, (x0, x1), (y0, y1)))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// The legend's corner for a line chart: the first of upper right, upper left, lower right, lower left
/// whose corner region (the outer 35% of the width × 30% of the height) holds the fewest drawn values
/// (points and the ends of bands / error bars), so the legend covers as little data as it can.
fn legend_corner(c: &LineChart, ym: YMap, x: (f64, f64), y: (f64, f64)) -> SeriesLabelPosition {
    let mut counts = [0usize; 4];
    let mut add = |px: f64, py: f64| {
        let Some(py) = ym.to_axis(py) else { return };
        let u = (px - x.0) / (x.1 - x.0);
        let v = (py - y.0) / (y.1 - y.0);
        let (right, left, top, bottom) = (u > 0.65, u < 0.35, v > 0.7, v < 0.3);
        for (k, inside) in [right && top, left && top, right && bottom, left && bottom]
            .into_iter()
            .enumerate()
        {
            counts[k] += inside as usize;
        }
    };
    for s in &c.series {
        for &(px, py) in &s.points {
            add(px, py);
        }
        if let Some(Spread::Band(b)) | Some(Spread::ErrorBars(b)) = &s.spread {
            for &(px, lo, hi) in b {
                add(px, lo);
                add(px, hi);
            }
        }
    }
    let best = (0..4).min_by_key(|&k| (counts[k], k)).unwrap_or(0);
    [
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::LowerLeft,
    ][best]
        .clone()
}

/// The name of category `v` when v is (within 1e-6) an index of `cats`, else "" (no tick label).
fn category_label(cats: &[String], v: f64) -> String {
    let i = v.round();
    if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < cats.len() {
        cats[i as usize].clone()
    } else {
        String::new()
    }
}

fn draw_bars<DB: DrawingBackend>(
    c: &BarChart,
    root: &DrawingArea<DB, Shift>,
) -> std::result::Result<(), String> {
    let ym = YMap {
        log: c.axes.y_scale == Scale::Log,
    };
    let n = c.categories.len().max(1);
    let ys = c.groups.iter().flat_map(|g| {
        g.values
            .iter()
            .enumerate()
            .flat_map(|(i, &v)| {
                let e = g.errors.as_ref().map_or(0.0, |e| e[i]);
                [v, v - e, v + e]
            })
            .filter_map(|y| ym.to_axis(y))
            .collect::<Vec<_>>()
    });
    let (y0, mut y1) = axis_range(ys, ym.log, true);
    if c.groups.iter().any(|g| !g.label.is_empty()) {
        // Headroom for the legend above the tallest bar.
        y1 += 0.12 * c.groups.len() as f64 * (y1 - y0);
    }
    let (y_coord, y_labels) = ym.coord(y0, y1);
    let mut chart = ChartBuilder::on(root)
        .caption(&c.axes.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), y_coord)
        .map_err(err)?;
    let cats = c.categories.clone();
    let xfmt = move |v: &f64| category_label(&cats, *v);
    let yfmt = |v: &f64| y_labels.at(*v);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 2)
        .x_desc(&c.axes.x_label)
        .y_desc(&c.axes.y_label)
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .label_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
        .max_light_lines(2)
        .draw()
        .map_err(err)?;
    let g_n = c.groups.len().max(1) as f64;
    let width = 0.8 / g_n;
    let base = if ym.log { y0 } else { 0.0f64.clamp(y0, y1) };
    let mut any_label = false;
    for (gi, g) in c.groups.iter().enumerate() {
        let color = palette(gi);
        let left = |i: usize| i as f64 - 0.4 + gi as f64 * width;
        let bars: Vec<_> = g
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, &v)| {
                let v = ym.to_axis(v)?;
                Some(Rectangle::new(
                    [(left(i), base), (left(i) + width * 0.95, v)],
                    color.filled(),
                ))
            })
            .collect();
        let ann = chart.draw_series(bars).map_err(err)?;
        if !g.label.is_empty() {
            any_label = true;
            ann.label(&g.label).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
            });
        }
        if let Some(errs) = &g.errors {
            chart
                .draw_series(
                    g.values
                        .iter()
                        .zip(errs)
                        .enumerate()
                        .filter_map(|(i, (&v, &e))| {
                            if !v.is_finite() || !e.is_finite() {
                                return None;
                            }
                            let x = left(i) + width * 0.475;
                            let (lo, mid, hi) =
                                (ym.clamp(v - e, y0), ym.clamp(v, y0), ym.clamp(v + e, y0));
                            Some(ErrorBar::new_vertical(
                                x,
                                lo,
                                mid,
                                hi,
                                BLACK.stroke_width(2),
                                8,
                            ))
                        }),
                )
                .map_err(err)?;
        }
    }
    if any_label {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn draw_row<DB: DrawingBackend>(
    c: &RowPlot,
    root: &DrawingArea<DB, Shift>,
) -> std::result::Result<(), String> {
    let ym = YMap {
        log: c.axes.y_scale == Scale::Log,
    };
    let n = c.values.len();
    let x1 = (n as f64).max(1.0);
    // The y range needs the column maxima, which need the plot width: the labels and margins are fixed,
    // so lay out once with a provisional range to learn the width.
    let chart_builder = |y0: f64, y1: f64| {
        ChartBuilder::on(root)
            .caption(&c.axes.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x1, ym.coord(y0, y1).0)
            .map_err(err)
    };
    let width = {
        let probe = chart_builder(0.0, 1.0)?;
        probe.plotting_area().dim_in_pixel().0.max(1) as usize
    };
    let cols = c.values.downsample(width);
    let (y0, y1) = axis_range(cols.iter().filter_map(|&v| ym.to_axis(v)), ym.log, true);
    // Nothing drawn yet except the probe's (empty) layout: clear it.
    root.fill(&WHITE).map_err(err)?;
    let mut chart = chart_builder(y0, y1)?;
    let y_labels = ym.coord(y0, y1).1;
    let yfmt = |v: &f64| y_labels.at(*v);
    let xfmt = |v: &f64| fmt_num(*v);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(&c.axes.x_label)
        .y_desc(&c.axes.y_label)
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .label_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
        .max_light_lines(2)
        .draw()
        .map_err(err)?;
    let color = palette(0);
    let m = cols.len();
    let mut poly = vec![(0.0, y0)];
    for (ci, &v) in cols.iter().enumerate() {
        let (a, b) = (
            column_start(ci, n, m) as f64,
            column_start(ci + 1, n, m) as f64,
        );
        let y = ym.clamp(v, y0);
        poly.push((a, y));
        poly.push((b, y));
    }
    poly.push((x1, y0));
    chart
        .draw_series(std::iter::once(Polygon::new(poly.clone(), color.filled())))
        .map_err(err)?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            poly,
            color.stroke_width(1),
        )))
        .map_err(err)?;
    // Markers: dashed grey lines; a label is drawn only where it does not overlap the previous one
    // (width estimated as 0.6 em per character).
    let font_px = 12.0;
    let px_per_x = width as f64 / x1;
    let mut next_free = f64::NEG_INFINITY;
    for mk in &c.markers {
        if !mk.x.is_finite() {
            continue;
        }
        chart
            .draw_series(DashedLineSeries::new(
                vec![(mk.x, y0), (mk.x, y1)],
                6,
                4,
                RGBColor(90, 90, 90).stroke_width(1),
            ))
            .map_err(err)?;
        let px = mk.x * px_per_x;
        if !mk.label.is_empty() && px >= next_free {
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((mk.x, y1))
                        + Text::new(
                            mk.label.clone(),
                            (3, 2),
                            ("sans-serif", font_px).into_font().color(&BLACK),
                        ),
                ))
                .map_err(err)?;
            next_free = px + 0.6 * font_px * mk.label.chars().count() as f64 + 4.0;
        }
    }
    Ok(())
}
