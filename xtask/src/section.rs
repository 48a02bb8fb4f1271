//! Marker-delimited sections of a generated document (docs/PERFORMANCE.md): each benchmark
//! generator owns the text between its own begin and end markers and leaves the rest alone.

/// The section of `doc` from `begin` through `end` (markers included), if it has one.
pub fn extract<'a>(doc: &'a str, begin: &str, end: &str) -> Option<&'a str> {
    let start = doc.find(begin)?;
    let stop = doc[start..].find(end)? + start + end.len();
    Some(&doc[start..stop])
}

/// `doc` with its `begin`..`end` section replaced by `section`, or `section` appended when it
/// has none.
pub fn splice(doc: &str, begin: &str, end: &str, section: &str) -> String {
    let section = section.trim_end();
    match (doc.find(begin), extract(doc, begin, end)) {
        (Some(start), Some(old)) => {
            format!("{}{section}{}", &doc[..start], &doc[start + old.len()..])
        }
        _ => format!("{}\n\n{section}\n", doc.trim_end()),
    }
}
