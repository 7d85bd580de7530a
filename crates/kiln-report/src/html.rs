//! HTML text helpers: escaping (model outputs are untrusted text) and
//! number formatting shared by tables and plots.

use std::fmt::Write;

/// Escapes `text` for HTML/SVG element content and quoted attribute values.
/// Control characters other than tab and newline are replaced by U+FFFD:
/// they are invalid in HTML and a model's output may contain any byte.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            '\r' => {}
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A figure for a table: integers as integers, very large or small values
/// in scientific notation, everything else with four significant digits.
pub fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == x.trunc() && x.abs() < 1e12 {
        return format!("{}", x as i64);
    }
    let mag = x.abs();
    if !(1e-3..1e6).contains(&mag) {
        return trim_sci(&format!("{x:.3e}"));
    }
    let decimals = (3 - mag.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// "1.500e-3" -> "1.5e-3", "2.000e0" -> "2".
pub(crate) fn trim_sci(s: &str) -> String {
    let (mantissa, exp) = s.split_once('e').unwrap_or((s, "0"));
    let mantissa = if mantissa.contains('.') {
        mantissa.trim_end_matches('0').trim_end_matches('.')
    } else {
        mantissa
    };
    if exp == "0" {
        mantissa.to_string()
    } else {
        format!("{mantissa}e{exp}")
    }
}

/// A table with a header row; cells are HTML already (escape text first).
pub struct Table {
    class: &'static str,
    header: Vec<String>,
    rows: Vec<(&'static str, Vec<String>)>,
    numeric_from: usize,
    first_cell_class: &'static str,
}

impl Table {
    pub fn new(class: &'static str, header: impl IntoIterator<Item = String>) -> Self {
        Table {
            class,
            header: header.into_iter().collect(),
            rows: Vec::new(),
            numeric_from: usize::MAX,
            first_cell_class: "",
        }
    }

    /// Columns from `col` on hold figures: right-aligned, tabular digits.
    pub fn numeric_from(mut self, col: usize) -> Self {
        self.numeric_from = col;
        self
    }

    /// A class for the first cell of every body row.
    pub fn first_cell_class(mut self, class: &'static str) -> Self {
        self.first_cell_class = class;
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(("", cells));
    }

    /// A row with a class of its own (e.g. "overall" for a total).
    pub fn row_class(&mut self, class: &'static str, cells: Vec<String>) {
        self.rows.push((class, cells));
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let mut s = format!("<table class=\"{}\"><thead><tr>", self.class);
        for (i, h) in self.header.iter().enumerate() {
            let _ = write!(s, "<th{}>{h}</th>", self.cell_class(i, false));
        }
        s.push_str("</tr></thead><tbody>");
        for (class, row) in &self.rows {
            if class.is_empty() {
                s.push_str("<tr>");
            } else {
                let _ = write!(s, "<tr class=\"{class}\">");
            }
            for (i, cell) in row.iter().enumerate() {
                let _ = write!(s, "<td{}>{cell}</td>", self.cell_class(i, true));
            }
            s.push_str("</tr>");
        }
        s.push_str("</tbody></table>");
        s
    }

    fn cell_class(&self, col: usize, body: bool) -> String {
        if col >= self.numeric_from {
            " class=\"num\"".into()
        } else if body && col == 0 && !self.first_cell_class.is_empty() {
            format!(" class=\"{}\"", self.first_cell_class)
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_and_quotes() {
        let evil = "<script>alert('x')</script> & \"q\"";
        let e = escape(evil);
        assert_eq!(
            e,
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert!(!e.contains('<') && !e.contains('>') && !e.contains('"'));
    }

    #[test]
    fn escape_keeps_text_and_newlines_and_replaces_controls() {
        assert_eq!(escape("héllo\n\tworld"), "héllo\n\tworld");
        assert_eq!(escape("a\u{0}b\u{1b}[31m\r\n"), "a\u{FFFD}b\u{FFFD}[31m\n");
    }

    #[test]
    fn escape_is_not_applied_twice_by_accident() {
        // An already escaped entity in a model's output must show literally.
        assert_eq!(escape("&lt;"), "&amp;lt;");
    }

    #[test]
    fn numbers_are_short_and_exact_where_integral() {
        assert_eq!(fmt_num(600.0), "600");
        assert_eq!(fmt_num(-3.0), "-3");
        assert_eq!(fmt_num(3.24159), "3.242");
        assert_eq!(fmt_num(0.012345), "0.01235");
        assert_eq!(fmt_num(0.5), "0.5");
        assert_eq!(fmt_num(12345.678), "12346");
        assert_eq!(fmt_num(3e-4), "3e-4");
        assert_eq!(fmt_num(1.5e-5), "1.5e-5");
        assert_eq!(fmt_num(2.5e7), "25000000");
        assert_eq!(fmt_num(2.5e13), "2.5e13");
        assert_eq!(fmt_num(f64::NAN), "NaN");
    }

    #[test]
    fn table_renders_header_and_rows() {
        let mut t = Table::new("t", ["a".to_string(), "b".to_string()]);
        assert!(t.is_empty());
        t.row(vec!["1".into(), "2".into()]);
        let h = t.render();
        assert_eq!(
            h,
            "<table class=\"t\"><thead><tr><th>a</th><th>b</th></tr></thead>\
             <tbody><tr><td>1</td><td>2</td></tr></tbody></table>"
        );
        let mut t = Table::new("t", ["a".to_string(), "b".to_string()])
            .numeric_from(1)
            .first_cell_class("p");
        t.row_class("overall", vec!["x".into(), "3".into()]);
        assert_eq!(
            t.render(),
            "<table class=\"t\"><thead><tr><th>a</th><th class=\"num\">b</th></tr></thead>\
             <tbody><tr class=\"overall\"><td class=\"p\">x</td><td class=\"num\">3</td></tr></tbody></table>"
        );
    }
}
