// SPDX-License-Identifier: GPL-2.0

//! Results: samples and their median and spread, markdown tables, and a
//! figure (a table, notes, and a hand-written SVG bar chart) printed to
//! stdout and written to `--out DIR`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

/// Measurements of one quantity over the runs.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (the mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// A number with about three significant digits and thousands grouped:
/// `16,384`, `2.53`, `0.0312`.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v.round());
        let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// An axis tick: round values without decimals (`1`, `10`, `20,000`).
fn tick(v: f64) -> String {
    if v >= 1.0 && v.fract() == 0.0 && v < 1000.0 {
        format!("{v:.0}")
    } else {
        num(v)
    }
}

/// A ratio: `0.83x`.
pub fn ratio(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}x")
    } else {
        "n/a".into()
    }
}

/// `min–max` of samples, formatted with [`num`].
pub fn spread(s: &Samples) -> String {
    if s.0.is_empty() {
        return "n/a".into();
    }
    format!("{}–{}", num(s.min()), num(s.max()))
}

/// A markdown table.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// The table in GitHub markdown; columns after the first are
    /// right-aligned (they hold numbers).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        s.push_str(&line(&self.header));
        let align: Vec<String> = (0..self.header.len())
            .map(|i| if i == 0 { "---".into() } else { "---:".into() })
            .collect();
        s.push_str(&line(&align));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }
}

/// One bar: a median with its min and max.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
    /// Index into the chart's palette (a series: "read", "write", ...).
    pub series: usize,
}

/// A group of bars under a heading.
#[derive(Debug, Clone)]
pub struct Section {
    pub title: String,
    pub bars: Vec<Bar>,
}

/// A horizontal bar chart with min-max whiskers.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    /// The unit on the axis.
    pub unit: String,
    /// Logarithmic axis (values spanning decades).
    pub log: bool,
    /// Names of the series, for the legend.
    pub series: Vec<String>,
    pub sections: Vec<Section>,
}

const PALETTE: &[&str] = &[
    "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Chart {
    /// The chart as SVG text.
    pub fn svg(&self) -> String {
        const W: f64 = 900.0;
        const LABEL_W: f64 = 300.0;
        const PLOT_W: f64 = 480.0;
        const ROW: f64 = 20.0;
        const HEAD: f64 = 24.0;
        const TOP: f64 = 56.0;
        let x0 = LABEL_W + 10.0;

        let all: Vec<&Bar> = self.sections.iter().flat_map(|s| &s.bars).collect();
        let finite = |v: f64| v.is_finite() && (!self.log || v > 0.0);
        let vmax = all
            .iter()
            .flat_map(|b| [b.value, b.hi])
            .filter(|v| finite(*v))
            .fold(0.0, f64::max);
        let vmin = all
            .iter()
            .flat_map(|b| [b.value, b.lo])
            .filter(|v| finite(*v) && *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        // The axis: 0..max (linear) or a whole number of decades (log).
        let (lo_dec, hi_dec) = if self.log && vmax > 0.0 {
            (
                vmin.log10().floor(),
                vmax.log10().ceil().max(vmin.log10().floor() + 1.0),
            )
        } else {
            (0.0, 0.0)
        };
        // Linear: ticks at a round step (1, 2 or 5 times a power of ten),
        // four or five of them.
        let step = {
            let raw = if vmax > 0.0 { vmax / 4.0 } else { 0.25 };
            let p = 10f64.powf(raw.log10().floor());
            [1.0, 2.0, 5.0, 10.0]
                .into_iter()
                .map(|m| m * p)
                .find(|&s| s >= raw)
                .unwrap_or(10.0 * p)
        };
        let xmax = (vmax / step).ceil().max(1.0) * step;
        let scale = |v: f64| -> f64 {
            if !finite(v) {
                return 0.0;
            }
            let f = if self.log {
                ((v.log10() - lo_dec) / (hi_dec - lo_dec)).clamp(0.0, 1.0)
            } else {
                (v / xmax).clamp(0.0, 1.0)
            };
            f * PLOT_W
        };

        let rows: usize = all.len();
        let h = TOP + self.sections.len() as f64 * HEAD + rows as f64 * ROW + 50.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="22" font-size="16" font-weight="bold">{}</text>"#,
            esc(&self.title)
        );
        // Legend.
        let mut lx = 10.0;
        for (i, name) in self.series.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<rect x="{lx}" y="32" width="12" height="12" fill="{}"/><text x="{}" y="42">{}</text>"#,
                PALETTE[i % PALETTE.len()],
                lx + 16.0,
                esc(name)
            );
            lx += 30.0 + 7.0 * name.len() as f64;
        }

        let mut y = TOP;
        for sec in &self.sections {
            y += HEAD;
            let _ = writeln!(
                s,
                r#"<text x="10" y="{}" font-weight="bold">{}</text>"#,
                y - 6.0,
                esc(&sec.title)
            );
            for b in &sec.bars {
                let color = PALETTE[b.series % PALETTE.len()];
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                    LABEL_W,
                    y + 14.0,
                    esc(&b.label)
                );
                let w = scale(b.value);
                let _ = writeln!(
                    s,
                    r#"<rect x="{x0}" y="{}" width="{w:.1}" height="{}" fill="{color}"/>"#,
                    y + 3.0,
                    ROW - 6.0
                );
                if finite(b.lo) && finite(b.hi) && b.hi > b.lo {
                    let (a, z) = (x0 + scale(b.lo), x0 + scale(b.hi));
                    let ym = y + ROW / 2.0;
                    let _ = writeln!(
                        s,
                        r#"<path d="M{a:.1} {ym}H{z:.1}M{a:.1} {}V{}M{z:.1} {}V{}" stroke="black" stroke-width="1"/>"#,
                        ym - 4.0,
                        ym + 4.0,
                        ym - 4.0,
                        ym + 4.0
                    );
                }
                let tx = x0 + scale(b.value.max(if finite(b.hi) { b.hi } else { 0.0 })) + 6.0;
                let _ = writeln!(
                    s,
                    r#"<text x="{tx:.1}" y="{}">{}</text>"#,
                    y + 14.0,
                    esc(&num(b.value))
                );
                y += ROW;
            }
        }

        // Axis with ticks.
        let ya = y + 8.0;
        let _ = writeln!(
            s,
            r#"<path d="M{x0} {ya}H{}" stroke="black"/>"#,
            x0 + PLOT_W
        );
        let ticks: Vec<f64> = if self.log {
            (lo_dec as i32..=hi_dec as i32)
                .map(|d| 10f64.powi(d))
                .collect()
        } else {
            (0..=(xmax / step).round() as i32)
                .map(|i| step * i as f64)
                .collect()
        };
        for t in ticks {
            let x = x0 + scale(t);
            let _ = writeln!(
                s,
                r#"<path d="M{x:.1} {ya}V{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                ya + 4.0,
                ya + 18.0,
                esc(&tick(t))
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}{}</text>"#,
            x0 + PLOT_W / 2.0,
            ya + 36.0,
            esc(&self.unit),
            if self.log { " (log scale)" } else { "" }
        );
        s.push_str("</svg>\n");
        s
    }
}

/// A figure: its name (the file name), markdown (title, tables, notes)
/// and chart.
pub struct Figure {
    pub name: &'static str,
    pub markdown: String,
    pub chart: Chart,
}

impl Figure {
    /// Prints the markdown (or, if `quiet`, one line); with `out`, writes
    /// `out/NAME.md` (which shows the chart) and `out/NAME.svg`.
    pub fn emit(&self, out: Option<&Path>, quiet: bool) -> Result<()> {
        if quiet {
            println!("{}: every point checked", self.name);
        } else {
            println!("{}", self.markdown);
        }
        if let Some(dir) = out {
            let md = format!("{}\n![{}]({}.svg)\n", self.markdown, self.name, self.name);
            let p = dir.join(format!("{}.md", self.name));
            fs::write(&p, md).with_context(|| format!("writing {}", p.display()))?;
            let p = dir.join(format!("{}.svg", self.name));
            fs::write(&p, self.chart.svg()).with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Samples(vec![5.0, 1.0, 3.0]);
        assert_eq!((s.median(), s.min(), s.max()), (3.0, 1.0, 5.0));
        assert_eq!(Samples(vec![4.0, 1.0, 3.0, 2.0]).median(), 2.5);
        assert!(Samples::default().median().is_nan());
    }

    #[test]
    fn numbers() {
        assert_eq!(num(16384.4), "16,384");
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(num(512.0), "512");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(2.5), "2.50");
        assert_eq!(num(0.0312), "0.031");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(f64::NAN), "n/a");
        assert_eq!(ratio(0.834), "0.83x");
    }

    #[test]
    fn markdown_table() {
        let mut t = Table::new(&["a", "b"]);
        t.row(vec!["x".into(), "1".into()]);
        assert_eq!(t.markdown(), "| a | b |\n| --- | ---: |\n| x | 1 |\n");
    }

    #[test]
    fn svg_has_a_bar_per_value_and_escapes_text() {
        let c = Chart {
            title: "a < b".into(),
            unit: "ms".into(),
            log: true,
            series: vec!["s".into()],
            sections: vec![Section {
                title: "t".into(),
                bars: vec![
                    Bar {
                        label: "one".into(),
                        value: 2.0,
                        lo: 1.0,
                        hi: 3.0,
                        series: 0,
                    },
                    Bar {
                        label: "two".into(),
                        value: 200.0,
                        lo: 200.0,
                        hi: 200.0,
                        series: 0,
                    },
                ],
            }],
        };
        let svg = c.svg();
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt; b"));
        // The legend's swatch, the background and one rect per bar.
        assert_eq!(svg.matches("<rect").count(), 4);
    }
}
