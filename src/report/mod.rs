//! The training report: one self-contained HTML page (images inlined as base64 PNG) with
//! the run's settings, fastai's results table, the plots, `most_confused` and the
//! classification report. Written by `kestrel fine-tune` as `report.html`.

pub mod run;

use anyhow::Context;
use base64::Engine as _;
use std::fmt::Write as _;
use std::path::Path;

/// One block of the page, in order.
#[derive(Debug, Clone)]
pub enum Section {
    /// A table with a header row.
    Table {
        /// Heading above the table.
        title: String,
        /// Column names.
        header: Vec<String>,
        /// Rows, each as long as `header`.
        rows: Vec<Vec<String>>,
    },
    /// A PNG file, inlined.
    Image {
        /// Heading above the image.
        title: String,
        /// The PNG's bytes.
        png: Vec<u8>,
    },
    /// Preformatted text (e.g. the classification report).
    Text {
        /// Heading above the text.
        title: String,
        /// The text, shown in a monospace font.
        body: String,
    },
}

/// A report page: a title, the run's settings as key/value pairs, then sections.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Page title and first heading.
    pub title: String,
    /// Settings of the run, shown as a two-column table at the top.
    pub settings: Vec<(String, String)>,
    /// The blocks below the settings.
    pub sections: Vec<Section>,
}

impl Report {
    /// A report titled `title`, with no settings or sections yet.
    pub fn new(title: impl Into<String>) -> Self {
        Self { title: title.into(), ..Self::default() }
    }

    /// Adds the PNG at `path` as an image section.
    ///
    /// Errors: the file cannot be read, naming it.
    pub fn image_file(&mut self, title: impl Into<String>, path: &Path) -> crate::Result<()> {
        let png = std::fs::read(path).with_context(|| format!("cannot read {} for the report", path.display()))?;
        self.sections.push(Section::Image { title: title.into(), png });
        Ok(())
    }

    /// The page as one HTML document with no external resources.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n",
            t = esc(&self.title)
        );
        if !self.settings.is_empty() {
            h.push_str("<h2>Settings</h2>\n<table class=\"kv\">\n");
            for (k, v) in &self.settings {
                let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
            }
            h.push_str("</table>\n");
        }
        for s in &self.sections {
            match s {
                Section::Table { title, header, rows } => {
                    let _ = writeln!(h, "<h2>{}</h2>\n<table>\n<tr>", esc(title));
                    for c in header {
                        let _ = write!(h, "<th>{}</th>", esc(c));
                    }
                    h.push_str("</tr>\n");
                    for r in rows {
                        h.push_str("<tr>");
                        for c in r {
                            let _ = write!(h, "<td>{}</td>", esc(c));
                        }
                        h.push_str("</tr>\n");
                    }
                    h.push_str("</table>\n");
                }
                Section::Image { title, png } => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
                    let _ = writeln!(
                        h,
                        "<h2>{t}</h2>\n<img alt=\"{t}\" src=\"data:image/png;base64,{b64}\">",
                        t = esc(title)
                    );
                }
                Section::Text { title, body } => {
                    let _ = writeln!(h, "<h2>{}</h2>\n<pre>{}</pre>", esc(title), esc(body));
                }
            }
        }
        h.push_str("</body></html>\n");
        h
    }

    /// Writes the page to `path` atomically.
    ///
    /// Errors: the file cannot be written, naming it.
    pub fn write(&self, path: &Path) -> crate::Result<()> {
        crate::util::atomic::write_atomic(path, self.to_html().as_bytes())
    }
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:0.5em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}\
table.kv th,table.kv td{text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd}\
pre{background:#f7f7f7;padding:0.5em;overflow-x:auto}";

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained_and_escaped() {
        let mut r = Report::new("pets <run>");
        r.settings.push(("arch".into(), "efficientnet_lite0".into()));
        r.sections.push(Section::Table {
            title: "Training".into(),
            header: vec!["epoch".into(), "error_rate".into()],
            rows: vec![vec!["0".into(), "0.3108".into()]],
        });
        r.sections.push(Section::Image { title: "loss".into(), png: vec![0x89, b'P', b'N', b'G'] });
        r.sections.push(Section::Text { title: "report".into(), body: "a & b".into() });
        let h = r.to_html();
        assert!(h.contains("<title>pets &lt;run&gt;</title>"));
        assert!(h.contains("<td>0.3108</td>"));
        assert!(h.contains("src=\"data:image/png;base64,iVBORw==\""));
        assert!(h.contains("<pre>a &amp; b</pre>"));
        assert!(!h.contains("http"), "no external resources");
    }
}
