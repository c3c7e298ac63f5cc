//! The page's small text pieces: HTML escaping ([`escape`]), clipped labels, microsecond and
//! shape text, op kind names, and the stream colours.

use crate::ir::OpKind;

/// Stream colours (light enough for black text); streams past 12 reuse them.
const PALETTE: [&str; 12] = [
    "#8ecae6", "#ffb703", "#90be6d", "#f28482", "#b8a1e3", "#f9c74f", "#4cc9b0", "#f4a261",
    "#a3b18a", "#e5989b", "#84a59d", "#cdb4db",
];
/// Colour of an op no stream launches.
const NO_STREAM: &str = "#dddddd";

/// Escapes text for HTML text and double- or single-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn kind_name(k: &OpKind) -> &'static str {
    match k {
        OpKind::EmbeddingBag { .. } => "embedding_bag",
        OpKind::TableBatchedEmbeddingBag { .. } => "table_batched_embedding_bag",
        OpKind::Linear { .. } => "linear",
        OpKind::Concat => "concat",
        OpKind::DotInteraction => "dot_interaction",
        OpKind::DcnCross { .. } => "dcn_cross",
        OpKind::Synthetic { .. } => "synthetic",
    }
}

pub(super) fn colour(stream: usize) -> &'static str {
    if stream == usize::MAX {
        NO_STREAM
    } else {
        PALETTE[stream % PALETTE.len()]
    }
}

/// At most `max` characters, with an ellipsis when cut.
pub(super) fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('\u{2026}');
        t
    }
}

pub(super) fn fmt_us(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "deadlock".into()
    }
}

pub(super) fn shape_text(shape: &[usize]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(clip("abcdef", 4), "abc\u{2026}");
        assert_eq!(clip("abc", 4), "abc");
    }
}
