//! Reports: per kernel `<variant>.md`, `<variant>.json` and `<variant>.svg` (a bar per
//! candidate: measured mean or predicted time, winner marked, rejected candidates listed
//! with their reasons), and `index.md` / `index.html` over all kernels.
//!
//! The SVG is written by hand (a few rects and texts): no plotting crate was in the
//! dependency set, and this keeps the build small.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::tuner::{Basis, CandidateResult, KernelTuning, Status};

/// A cached or fresh tuning with where it came from.
#[derive(Clone, Debug)]
pub struct ReportItem {
    /// The tuning.
    pub tuning: KernelTuning,
    /// Whether it came from the cache in this run.
    pub from_cache: bool,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Value plotted for a candidate, microseconds: measured mean when measured, else predicted.
pub fn value_us(c: &CandidateResult) -> Option<f64> {
    c.measured
        .as_ref()
        .map(|m| m.mean_ns / 1e3)
        .or(c.predicted.map(|p| p.time_us))
}

fn basis_word(t: &KernelTuning) -> &'static str {
    match t.basis {
        Basis::Measured => "measured (criterion, CUDA events)",
        Basis::Predicted => "predicted by the static model (no GPU: not a measurement)",
    }
}

/// The SVG chart of one kernel.
pub fn svg(t: &KernelTuning) -> String {
    let rows: Vec<&CandidateResult> = t.candidates.iter().collect();
    let (label_w, bar_w, row_h, top) = (150.0, 420.0, 18.0, 44.0);
    let width = label_w + bar_w + 330.0;
    let height = top + row_h * rows.len() as f64 + 24.0;
    let max = rows
        .iter()
        .filter_map(|c| value_us(c))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let unit = if t.basis == Basis::Measured {
        "measured mean, us"
    } else {
        "PREDICTED time, us (static model, not measured)"
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="8" y="16" font-size="13" font-weight="bold">{} ({}, {})</text><text x="8" y="32">{}</text>"#,
        esc(&t.variant),
        t.arch.sm_name(),
        esc(&t.device),
        esc(unit)
    );
    for (i, c) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let _ = write!(
            s,
            r#"<text x="8" y="{}">{}</text>"#,
            y + 12.0,
            esc(&c.tile.suffix())
        );
        match value_us(c) {
            Some(v) if !c.status.rejected() => {
                let w = (v / max * bar_w).max(1.0);
                let fill = match c.status {
                    Status::Winner => "#2e7d32",
                    Status::Passed => "#1565c0",
                    _ => "#9e9e9e",
                };
                let mark = if c.status == Status::Winner {
                    " WINNER"
                } else if c.status == Status::NotGated {
                    " (not gated)"
                } else {
                    ""
                };
                let _ = writeln!(
                    s,
                    r#"<rect x="{label_w}" y="{}" width="{w:.1}" height="{}" fill="{fill}"/><text x="{:.1}" y="{}">{v:.1}{mark}</text>"#,
                    y + 2.0,
                    row_h - 4.0,
                    label_w + w + 4.0,
                    y + 12.0
                );
            }
            _ => {
                let why = c.status.reason().unwrap_or("");
                let short: String = why.chars().take(70).collect();
                let _ = writeln!(
                    s,
                    r##"<text x="{label_w}" y="{}" fill="#c62828">rejected: {}: {}</text>"##,
                    y + 12.0,
                    c.status.label(),
                    esc(&short)
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |x| format!("{x:.2}"))
}

/// The Markdown page of one kernel.
pub fn markdown(t: &KernelTuning, from_cache: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {}\n", t.variant);
    let _ = writeln!(
        s,
        "- architecture: {}\n- device: {}\n- tuning shape: {} (bucket `{}`)\n- ranking basis: **{}**\n- codegen hash: `{}`\n- tuned in {:.1} s{}\n",
        t.arch.sm_name(),
        t.device,
        t.shape,
        t.bucket,
        basis_word(t),
        &t.codegen_hash[..16.min(t.codegen_hash.len())],
        t.tune_seconds,
        if from_cache { " (this run: from the cache)" } else { "" }
    );
    match t.winner_result() {
        Some(w) => {
            let _ = writeln!(s, "**Winner: `{}`**\n", w.tile.suffix());
        }
        None => {
            let _ = writeln!(s, "**No candidate survived** (see the reasons below).\n");
        }
    }
    let _ = writeln!(s, "![chart]({}.svg)\n", t.variant);
    let col = if t.basis == Basis::Measured {
        "measured mean us [95% CI]"
    } else {
        "measured"
    };
    let _ = writeln!(
        s,
        "| tile | status | regs | smem B | blocks/SM (limiter) | predicted us | {col} | gate max err | reason |\n|---|---|---|---|---|---|---|---|---|"
    );
    let mut order: Vec<&CandidateResult> = t.candidates.iter().collect();
    order.sort_by(|a, b| {
        (a.status.rejected(), value_us(a).unwrap_or(f64::INFINITY))
            .partial_cmp(&(b.status.rejected(), value_us(b).unwrap_or(f64::INFINITY)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    for c in order {
        let measured = c.measured.as_ref().map_or("-".to_owned(), |m| {
            format!(
                "{:.2} [{:.2}, {:.2}]",
                m.mean_ns / 1e3,
                m.mean_lo_ns / 1e3,
                m.mean_hi_ns / 1e3
            )
        });
        let occ = c.occupancy.map_or("-".to_owned(), |o| {
            format!("{} ({:?})", o.blocks_per_sm, o.limiter).to_lowercase()
        });
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.tile.suffix(),
            c.status.label(),
            c.resources
                .as_ref()
                .map_or("-".into(), |r| r.registers.to_string()),
            c.resources
                .as_ref()
                .map_or("-".into(), |r| r.smem_bytes.to_string()),
            occ,
            c.predicted.map_or("-".to_owned(), |p| match p.splits {
                Some(k) => format!("{:.2} ({k} splits)", p.time_us),
                None => format!("{:.2}", p.time_us),
            }),
            measured,
            c.gate
                .as_ref()
                .map_or("-".into(), |g| format!("{:.2e}", g.max_err)),
            md_cell(c.status.reason().unwrap_or(""))
        );
    }
    s
}

/// Write every per-kernel file and the index into `out`. Returns the index path.
pub fn write_reports(out: &Path, items: &[ReportItem]) -> std::io::Result<PathBuf> {
    fs::create_dir_all(out)?;
    for it in items {
        let t = &it.tuning;
        fs::write(
            out.join(format!("{}.md", t.variant)),
            markdown(t, it.from_cache),
        )?;
        fs::write(
            out.join(format!("{}.json", t.variant)),
            serde_json::to_string_pretty(t).map_err(std::io::Error::other)?,
        )?;
        fs::write(out.join(format!("{}.svg", t.variant)), svg(t))?;
    }
    let mut md = String::from("# attnforge tuning report\n\n");
    let _ = writeln!(
        md,
        "Ranking basis per kernel: *measured* = criterion with CUDA events on a GPU; *predicted* = \
         static model (no GPU; a prediction, not a measurement). See docs/tuning.md.\n"
    );
    md.push_str("| kernel | arch | basis | winner | value us | candidates | rejected | source |\n|---|---|---|---|---|---|---|---|\n");
    let mut html = String::from("<!doctype html><meta charset=\"utf-8\"><title>attnforge tuning report</title><h1>attnforge tuning report</h1><table border=1 cellpadding=3><tr><th>kernel<th>arch<th>basis<th>winner<th>value us<th>candidates<th>rejected<th>source</tr>\n");
    for it in items {
        let t = &it.tuning;
        let w = t.winner_result();
        let winner = w.map_or("none".to_owned(), |c| c.tile.suffix());
        let val = fmt_opt(w.and_then(value_us));
        let rejected = t.candidates.iter().filter(|c| c.status.rejected()).count();
        let basis = match t.basis {
            Basis::Measured => "measured",
            Basis::Predicted => "predicted",
        };
        let src = if it.from_cache { "cache" } else { "tuned" };
        let _ = writeln!(
            md,
            "| [{v}]({v}.md) | {} | {basis} | `{winner}` | {val} | {} | {rejected} | {src} |",
            t.arch.sm_name(),
            t.candidates.len(),
            v = t.variant
        );
        let _ = writeln!(
            html,
            "<tr><td><a href=\"{v}.svg\">{v}</a> (<a href=\"{v}.md\">md</a>, <a href=\"{v}.json\">json</a>)<td>{}<td>{basis}<td>{winner}<td>{val}<td>{}<td>{rejected}<td>{src}</tr>",
            t.arch.sm_name(),
            t.candidates.len(),
            v = esc(&t.variant)
        );
    }
    html.push_str("</table>\n");
    fs::write(out.join("index.md"), md)?;
    fs::write(out.join("index.html"), html)?;
    Ok(out.join("index.md"))
}
