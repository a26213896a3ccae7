//! The search's curve: p99 and p50 latency against the offered rate, the target as a
//! horizontal line. SVG through plotters' SVG backend; PNG through a small RGB raster
//! backend whose text is the public-domain 8x8 bitmap font of `font8x8` (no font files,
//! no TrueType), encoded with `png`.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};

use crate::error::{BoxError, LoadgenError};
use crate::search::Search;

/// A chart that draws itself on any plotters backend: the SVG one, or the PNG raster of
/// this module. The search's curve is one; `dlrs report`'s charts are others.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32) {
        (960, 600)
    }

    /// Draws the chart on `root` (filling its background first); errors are plotters' own,
    /// as text.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static;
}

/// Draws `s` to `path` (`.svg` or `.png`), titled `title`.
pub fn plot(path: &Path, s: &Search, title: &str) -> Result<(), LoadgenError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let curve = SearchCurve { search: s, title };
    match ext.as_deref() {
        Some("svg") => write_svg(path, &curve),
        Some("png") => write_png(path, &curve),
        _ => Err(LoadgenError::flag(
            "--plot",
            format!(
                "{}: expected a file name ending in .svg or .png",
                path.display()
            ),
        )),
    }
}

fn file_error(path: &Path, what: &'static str, source: BoxError) -> LoadgenError {
    LoadgenError::PlotFile {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `fig` as an SVG document.
pub fn svg_string(fig: &impl Figure) -> Result<String, LoadgenError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, fig.size()).into_drawing_area();
        fig.draw(&root).map_err(LoadgenError::Draw)?;
        root.present()
            .map_err(|e| LoadgenError::Draw(e.to_string()))?;
    }
    Ok(out)
}

/// Writes `fig` to `path` as SVG.
pub fn write_svg(path: &Path, fig: &impl Figure) -> Result<(), LoadgenError> {
    let svg = svg_string(fig)?;
    std::fs::write(path, svg).map_err(|e| file_error(path, "writing", e.into()))
}

/// `fig` as a PNG image (RGB, text in the 8x8 bitmap font).
pub fn png_bytes(fig: &impl Figure) -> Result<Vec<u8>, LoadgenError> {
    let (w, h) = fig.size();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = Raster {
            w,
            h,
            buf: &mut buf,
        }
        .into_drawing_area();
        fig.draw(&root).map_err(LoadgenError::Draw)?;
        root.present()
            .map_err(|e| LoadgenError::Draw(e.to_string()))?;
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let encoding = |e: png::EncodingError| LoadgenError::Draw(format!("encoding the PNG: {e}"));
    let mut wr = enc.write_header().map_err(encoding)?;
    wr.write_image_data(&buf).map_err(encoding)?;
    wr.finish().map_err(encoding)?;
    Ok(out)
}

/// Writes `fig` to `path` as PNG.
pub fn write_png(path: &Path, fig: &impl Figure) -> Result<(), LoadgenError> {
    let bytes = png_bytes(fig)?;
    std::fs::write(path, bytes).map_err(|e| file_error(path, "writing", e.into()))
}

/// The search's curve: p99 and p50 against the offered rate.
struct SearchCurve<'a> {
    search: &'a Search,
    title: &'a str,
}

impl Figure for SearchCurve<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        draw(root, self.search, self.title).map_err(|e| match e {
            LoadgenError::Draw(s) => s,
            other => other.to_string(),
        })
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    s: &Search,
    title: &str,
) -> Result<(), LoadgenError>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| LoadgenError::Draw(e.to_string());
    root.fill(&WHITE).map_err(err)?;
    let mut pts: Vec<(f64, f64, f64)> = s
        .points
        .iter()
        .filter_map(|p| {
            Some((
                p.report.offered_qps,
                p.report.latency_ms.p50?,
                p.report.latency_ms.p99?,
            ))
        })
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let target = s.target_p99_ms;
    let x_max = pts.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    // whole decades, so the log axis is labelled at 1, 10, 100 ...
    let lo = pts.iter().map(|p| p.1).fold(target, f64::min).max(1e-3);
    let hi = pts.iter().map(|p| p.2).fold(target, f64::max);
    let y_min = 10f64.powf(lo.log10().floor());
    let y_max = 10f64.powf((hi * 1.2).log10().ceil());

    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered QPS (Poisson)")
        .y_desc("latency, ms (log scale)")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y}")
            }
        })
        .draw()
        .map_err(err)?;

    let red = RGBColor(200, 30, 30);
    let blue = RGBColor(30, 80, 200);
    chart
        .draw_series(LineSeries::new(
            pts.iter().map(|p| (p.0, p.2)),
            red.stroke_width(2),
        ))
        .map_err(err)?
        .label("p99")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2)));
    chart
        .draw_series(pts.iter().map(|p| Circle::new((p.0, p.2), 4, red.filled())))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            pts.iter().map(|p| (p.0, p.1)),
            blue.stroke_width(2),
        ))
        .map_err(err)?
        .label("p50")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
    chart
        .draw_series(
            pts.iter()
                .map(|p| Circle::new((p.0, p.1), 3, blue.filled())),
        )
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, target), (x_max, target)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?
        .label(format!("target p99 {target} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
    if let Some(b) = s.best() {
        let x = b.report.offered_qps;
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(LineSeries::new(
                [(x, y_min), (x, y_max)],
                grey.stroke_width(1),
            ))
            .map_err(err)?
            .label(format!(
                "latency-bounded: {x:.0} QPS offered, {:.0} achieved",
                b.report.achieved_qps
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// An RGB8 raster with a built-in 8x8 bitmap font.
struct Raster<'a> {
    w: u32,
    h: u32,
    buf: &'a mut [u8],
}

#[derive(Debug)]
struct NoError;

impl std::fmt::Display for NoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raster error")
    }
}

impl std::error::Error for NoError {}

/// Pixels per font pixel for a font of `size` px.
fn font_scale(size: f64) -> i32 {
    ((size / 12.0).floor() as i32).max(1)
}

impl DrawingBackend for Raster<'_> {
    type ErrorType = NoError;

    fn get_size(&self) -> (u32, u32) {
        (self.w, self.h)
    }
    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<NoError>> {
        Ok(())
    }
    fn present(&mut self) -> Result<(), DrawingErrorKind<NoError>> {
        Ok(())
    }

    fn draw_pixel(
        &mut self,
        (x, y): BackendCoord,
        c: BackendColor,
    ) -> Result<(), DrawingErrorKind<NoError>> {
        if x < 0 || y < 0 || x >= self.w as i32 || y >= self.h as i32 || c.alpha <= 0.0 {
            return Ok(());
        }
        let i = (y as usize * self.w as usize + x as usize) * 3;
        let a = c.alpha.min(1.0);
        for (k, v) in [c.rgb.0, c.rgb.1, c.rgb.2].into_iter().enumerate() {
            let old = self.buf[i + k] as f64;
            self.buf[i + k] = (v as f64 * a + old * (1.0 - a)).round() as u8;
        }
        Ok(())
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<NoError>> {
        let s = font_scale(style.size()) as u32;
        Ok((text.chars().count() as u32 * 8 * s, 8 * s))
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<NoError>> {
        let color = style.color();
        let s = font_scale(style.size());
        let (w, h) = (text.chars().count() as i32 * 8 * s, 8 * s);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -w,
            HPos::Center => -w / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let trans = style.transform();
        for (ci, ch) in text.chars().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY[if ch.is_ascii() {
                ch as usize
            } else {
                '?' as usize
            }];
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 0 {
                        continue;
                    }
                    for sy in 0..s {
                        for sx in 0..s {
                            let x = ci as i32 * 8 * s + col * s + sx + dx;
                            let y = row as i32 * s + sy + dy;
                            let (x, y) = trans.transform(x, y);
                            self.draw_pixel((pos.0 + x, pos.1 + y), color)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
