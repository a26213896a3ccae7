//! The report's two kinds of chart, drawn with `dlrs_loadgen::plot`'s backends (plotters'
//! SVG, and the PNG raster with its bitmap font): bars by category (grouped or stacked,
//! upright or lying) and lines against a log-scale x. Each keeps its legend in a panel of
//! its own at the right, so no legend covers a bar or a line.

use std::ops::Range;

use dlrs_loadgen::plot::Figure;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// A category axis: `n` categories, category `i` spanning `i..i + 1`, ticked and labelled
/// at its middle.
struct Categories {
    n: usize,
    inner: RangedCoordf64,
}

impl Categories {
    fn new(n: usize) -> Self {
        Categories {
            n,
            inner: (0.0..n as f64).into(),
        }
    }
}

impl Ranged for Categories {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            (0..self.n).map(|i| i as f64 + 0.5).collect()
        }
    }

    fn range(&self) -> Range<f64> {
        0.0..self.n as f64
    }
}

/// A named series and its colour.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub color: RGBColor,
    /// one value per category (bars) or per x (lines); `None`: no bar, or a gap
    pub values: Vec<Option<f64>>,
}

/// Bars per category.
#[derive(Clone, Debug)]
pub struct Bars {
    pub title: String,
    pub categories: Vec<String>,
    pub category_label: String,
    pub value_label: String,
    pub series: Vec<Series>,
    /// stacked (one bar a category) rather than side by side
    pub stacked: bool,
    /// categories down the y axis, values along x (for long category names)
    pub lying: bool,
    /// a reference line at this value, with its legend label
    pub reference: Option<(f64, String)>,
    /// the value axis ends here at least (e.g. 100 for shares in %)
    pub value_max: Option<f64>,
}

/// Lines against x on a log scale.
#[derive(Clone, Debug)]
pub struct Lines {
    pub title: String,
    /// the x values, shared by every series
    pub xs: Vec<f64>,
    pub x_label: String,
    pub y_label: String,
    pub y_log: bool,
    pub series: Vec<Series>,
    /// horizontal reference lines, each with its legend label
    pub references: Vec<(f64, String)>,
}

/// Colours that stay apart in print and for the common colour-vision deficiencies
/// (Okabe-Ito), then greys.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(240, 228, 66),
    RGBColor(120, 120, 120),
];

const SIZE: (u32, u32) = (960, 540);
const LEGEND_W: u32 = 230;

fn font(size: u32) -> TextStyle<'static> {
    ("sans-serif", size).into_font().into()
}

/// `1234567` as `1.23M`, `5300` as `5.3k`, `0.42` as `0.42`, `0.1` as `0.1`.
pub fn short(v: f64) -> String {
    let s = short_fixed(v);
    // no trailing zeros after a decimal point: 5.30k -> 5.3k, 0.10 -> 0.1
    let (num, unit) = s.split_at(s.trim_end_matches(['k', 'M', 'G']).len());
    if num.contains('.') {
        format!("{}{unit}", num.trim_end_matches('0').trim_end_matches('.'))
    } else {
        s
    }
}

/// An axis label for a count such as a batch size: `1024`, `16`, else [`short`].
pub fn count(v: f64) -> String {
    if (1.0..1e5).contains(&v) && (v - v.round()).abs() < 1e-6 {
        format!("{v:.0}")
    } else {
        short(v)
    }
}

fn short_fixed(v: f64) -> String {
    let a = v.abs();
    let (x, unit) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let digits = if x.abs() >= 100.0 || x == x.trunc() {
        0
    } else if x.abs() >= 10.0 {
        1
    } else {
        2
    };
    format!("{x:.digits$}{unit}")
}

/// Draws the legend entries (colour swatch, or a line for a reference) down `area`.
fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(RGBColor, String, bool)],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    let mut y = 60;
    for (color, name, is_line) in entries {
        if *is_line {
            area.draw(&PathElement::new(
                vec![(8, y + 7), (26, y + 7)],
                color.stroke_width(2),
            ))
            .map_err(e)?;
        } else {
            area.draw(&Rectangle::new([(8, y), (24, y + 14)], color.filled()))
                .map_err(e)?;
        }
        // long names wrap on spaces at 22 characters (the PNG's font is 8 px a character)
        let mut line = String::new();
        let mut dy = 0;
        for word in name.split(' ') {
            if !line.is_empty() && line.len() + word.len() + 1 > 22 {
                area.draw(&Text::new(line.clone(), (32, y + dy + 2), font(14)))
                    .map_err(e)?;
                line.clear();
                dy += 16;
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        area.draw(&Text::new(line, (32, y + dy + 2), font(14)))
            .map_err(e)?;
        y += dy + 26;
    }
    Ok(())
}

impl Figure for Bars {
    fn size(&self) -> (u32, u32) {
        SIZE
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        let (chart_area, legend_area) = root.split_horizontally(SIZE.0 - LEGEND_W);
        let n = self.categories.len().max(1);
        let k = self.series.len().max(1);
        let tops: Vec<f64> = (0..n)
            .map(|c| {
                let vals = self
                    .series
                    .iter()
                    .filter_map(|s| s.values.get(c).copied().flatten());
                if self.stacked {
                    vals.sum()
                } else {
                    vals.fold(0.0, f64::max)
                }
            })
            .collect();
        let mut vmax = tops.iter().copied().fold(0.0, f64::max);
        if let Some((r, _)) = &self.reference {
            vmax = vmax.max(*r);
        }
        vmax = match self.value_max {
            // shares that add up to the maximum: no headroom above it
            Some(m) if vmax <= m * 1.02 => m,
            _ => (vmax * 1.1).max(1e-9),
        };
        let cat_range = Categories::new(n);
        let names = self.categories.clone();
        let lying = self.lying;
        // lying, the first category is drawn at the top: position i holds category n - 1 - i
        let cat_fmt = move |x: &f64| {
            let i = (x.floor().max(0.0) as usize).min(n - 1);
            let i = if lying { n - 1 - i } else { i };
            names.get(i).cloned().unwrap_or_default()
        };
        let val_fmt = |v: &f64| short(*v);

        // each bar's rectangle in (category axis, value axis) units
        let mut rects: Vec<(f64, f64, f64, f64, RGBColor)> = Vec::new();
        for c in 0..n {
            let mut base = 0.0;
            for (si, s) in self.series.iter().enumerate() {
                let Some(v) = s.values.get(c).copied().flatten() else {
                    continue;
                };
                if self.stacked {
                    rects.push((c as f64 + 0.2, c as f64 + 0.8, base, base + v, s.color));
                    base += v;
                } else {
                    let w = 0.8 / k as f64;
                    let x0 = c as f64 + 0.1 + si as f64 * w;
                    rects.push((x0, x0 + w * 0.92, 0.0, v, s.color));
                }
            }
        }
        let mut entries: Vec<(RGBColor, String, bool)> = self
            .series
            .iter()
            .map(|s| (s.color, s.name.clone(), false))
            .collect();
        if let Some((_, name)) = &self.reference {
            entries.push((BLACK, name.clone(), true));
        }

        if self.lying {
            let longest = self
                .categories
                .iter()
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(4) as u32;
            let mut chart = ChartBuilder::on(&chart_area)
                .caption(&self.title, font(22))
                .margin(14)
                .x_label_area_size(52)
                .y_label_area_size((longest * 8 + 40).clamp(60, 260))
                .build_cartesian_2d(0.0..vmax, cat_range)
                .map_err(e)?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .x_desc(&self.value_label)
                .y_desc(&self.category_label)
                .label_style(font(14))
                .axis_desc_style(font(16))
                .x_label_formatter(&val_fmt)
                .y_label_formatter(&cat_fmt)
                .draw()
                .map_err(e)?;
            // the first category at the top
            let flip = |y: f64| n as f64 - y;
            chart
                .draw_series(rects.iter().map(|&(a, b, lo, hi, c)| {
                    Rectangle::new([(lo, flip(a)), (hi, flip(b))], c.filled())
                }))
                .map_err(e)?;
            if let Some((r, _)) = &self.reference {
                chart
                    .draw_series(LineSeries::new(
                        [(*r, 0.0), (*r, n as f64)],
                        BLACK.stroke_width(2),
                    ))
                    .map_err(e)?;
            }
        } else {
            let mut chart = ChartBuilder::on(&chart_area)
                .caption(&self.title, font(22))
                .margin(14)
                .x_label_area_size(52)
                .y_label_area_size(78)
                .build_cartesian_2d(cat_range, 0.0..vmax)
                .map_err(e)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc(&self.category_label)
                .y_desc(&self.value_label)
                .label_style(font(14))
                .axis_desc_style(font(16))
                .x_label_formatter(&cat_fmt)
                .y_label_formatter(&val_fmt)
                .draw()
                .map_err(e)?;
            chart
                .draw_series(
                    rects
                        .iter()
                        .map(|&(a, b, lo, hi, c)| Rectangle::new([(a, lo), (b, hi)], c.filled())),
                )
                .map_err(e)?;
            if let Some((r, _)) = &self.reference {
                chart
                    .draw_series(LineSeries::new(
                        [(0.0, *r), (n as f64, *r)],
                        BLACK.stroke_width(2),
                    ))
                    .map_err(e)?;
            }
        }
        legend(&legend_area, &entries)
    }
}

impl Figure for Lines {
    fn size(&self) -> (u32, u32) {
        SIZE
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        let (chart_area, legend_area) = root.split_horizontally(SIZE.0 - LEGEND_W);
        let xmin = self.xs.iter().copied().fold(f64::INFINITY, f64::min);
        let xmax = self.xs.iter().copied().fold(0.0, f64::max);
        let (xmin, xmax) = if xmin.is_finite() && xmax > xmin {
            (xmin, xmax)
        } else {
            (1.0, 2.0)
        };
        let vals = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().flatten().copied())
            .chain(self.references.iter().map(|r| r.0))
            .filter(|v| *v > 0.0);
        let (lo, hi) = vals.fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
        let (lo, hi) = if lo.is_finite() && hi > 0.0 {
            (lo, hi)
        } else {
            (1.0, 10.0)
        };
        let x_range = (xmin / 1.15..xmax * 1.15)
            .log_scale()
            .with_key_points(self.xs.clone());
        let x_fmt = |x: &f64| count(*x);
        let y_fmt = |y: &f64| short(*y);
        // the reference lines carry their names on the chart
        let entries: Vec<(RGBColor, String, bool)> = self
            .series
            .iter()
            .map(|s| (s.color, s.name.clone(), true))
            .collect();
        macro_rules! finish {
            ($chart:expr) => {{
                let chart = &mut $chart;
                chart
                    .configure_mesh()
                    .x_desc(&self.x_label)
                    .y_desc(&self.y_label)
                    .label_style(font(14))
                    .axis_desc_style(font(16))
                    .x_label_formatter(&x_fmt)
                    .y_label_formatter(&y_fmt)
                    .draw()
                    .map_err(e)?;
                for (r, name) in &self.references {
                    let grey = RGBColor(90, 90, 90);
                    chart
                        .draw_series(LineSeries::new(
                            [(xmin / 1.15, *r), (xmax * 1.15, *r)],
                            grey.stroke_width(1),
                        ))
                        .map_err(e)?;
                    // the line's name just above its left end
                    let style = font(14)
                        .color(&grey)
                        .pos(Pos::new(HPos::Left, VPos::Bottom));
                    chart
                        .draw_series(std::iter::once(Text::new(
                            name.clone(),
                            (xmin / 1.1, *r),
                            style,
                        )))
                        .map_err(e)?;
                }
                for s in &self.series {
                    let pts: Vec<(f64, f64)> = self
                        .xs
                        .iter()
                        .zip(&s.values)
                        .filter_map(|(x, v)| v.map(|v| (*x, v)))
                        .collect();
                    chart
                        .draw_series(LineSeries::new(pts.clone(), s.color.stroke_width(3)))
                        .map_err(e)?;
                    chart
                        .draw_series(pts.iter().map(|p| Circle::new(*p, 4, s.color.filled())))
                        .map_err(e)?;
                }
            }};
        }
        let builder = |area| {
            let mut b = ChartBuilder::on(area);
            b.caption(&self.title, font(22))
                .margin(14)
                .x_label_area_size(52)
                .y_label_area_size(78);
            b
        };
        if self.y_log {
            let y0 = 10f64.powf((lo * 0.8).log10().floor());
            let y1 = 10f64.powf((hi * 1.25).log10().ceil());
            let mut chart = builder(&chart_area)
                .build_cartesian_2d(x_range, (y0..y1).log_scale())
                .map_err(e)?;
            finish!(chart);
        } else {
            let mut chart = builder(&chart_area)
                .build_cartesian_2d(x_range, 0.0..hi * 1.15)
                .map_err(e)?;
            finish!(chart);
        }
        legend(&legend_area, &entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_numbers() {
        assert_eq!(short(1_234_567.0), "1.23M");
        assert_eq!(short(5300.0), "5.3k");
        assert_eq!(short(0.1), "0.1");
        assert_eq!(short(2.0e6), "2M");
        assert_eq!(count(1024.0), "1024");
        assert_eq!(short(250.0), "250");
        assert_eq!(short(0.42), "0.42");
        assert_eq!(short(64.0), "64");
        assert_eq!(short(1024.0), "1.02k");
        assert_eq!(short(10.5), "10.5");
    }

    #[test]
    fn both_kinds_draw_to_svg_and_png() {
        let s = |name: &str, values: Vec<Option<f64>>| Series {
            name: name.into(),
            color: PALETTE[0],
            values,
        };
        let bars = Bars {
            title: "t".into(),
            categories: vec!["a".into(), "b".into()],
            category_label: "c".into(),
            value_label: "v".into(),
            series: vec![
                s("x", vec![Some(1.0), None]),
                s("y", vec![Some(2.0), Some(3.0)]),
            ],
            stacked: true,
            lying: false,
            reference: Some((1.0, "one".into())),
            value_max: None,
        };
        for lying in [false, true] {
            let b = Bars {
                lying,
                ..bars.clone()
            };
            let svg = dlrs_loadgen::plot::svg_string(&b).unwrap();
            // every category is labelled (plotters puts a text's content on its own line)
            for c in ["a", "b"] {
                assert!(svg.lines().any(|l| l.trim() == c), "{c} in {svg}");
            }
            assert!(dlrs_loadgen::plot::png_bytes(&b).unwrap().len() > 1000);
        }
        let lines = Lines {
            title: "t".into(),
            xs: vec![1.0, 16.0, 256.0],
            x_label: "x".into(),
            y_label: "y".into(),
            y_log: true,
            series: vec![s("x", vec![Some(1.0), Some(5.0), None])],
            references: vec![(10.0, "10 ms".into())],
        };
        assert!(
            dlrs_loadgen::plot::svg_string(&lines)
                .unwrap()
                .contains("<svg")
        );
        assert!(dlrs_loadgen::plot::png_bytes(&lines).unwrap().len() > 1000);
    }
}
