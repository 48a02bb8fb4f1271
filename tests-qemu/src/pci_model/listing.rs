//! Parsing of the kernel's `PCIDEV` lines (the listing format is in the parent module's docs).

use super::*;

pub(super) fn parse_hex(text: &str) -> Option<u64> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u64::from_str_radix(digits, 16).ok()
}

/// Exactly `digits` hexadecimal digits, as the listing's fixed-width fields are printed.
fn fixed_hex(text: &str, digits: usize) -> Option<u32> {
    (text.len() == digits && text.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(text, 16).ok())
        .flatten()
}

fn parse_line(line: &str) -> Result<ListedFunction, String> {
    let mut words = line.split_whitespace();
    words.next(); // PCIDEV
    let bdf_text = words.next().ok_or("no address")?;
    let bdf = Bdf::parse(bdf_text).ok_or_else(|| format!("bad address `{bdf_text}`"))?;
    let mut fields = HashMap::new();
    for word in words {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("`{word}` is not key=value"))?;
        if ![
            "id",
            "class",
            "kind",
            "parent",
            "secondary",
            "bars",
            "rids",
            "group",
        ]
        .contains(&k)
        {
            return Err(format!("unknown field `{k}`"));
        }
        if fields.insert(k, v).is_some() {
            return Err(format!("field `{k}` twice"));
        }
    }
    let field = |k: &str| fields.get(k).copied().ok_or(format!("no `{k}=`"));
    let bad = |k: &str, v: &str| format!("bad {k}=`{v}`");

    let id = field("id")?;
    let (vendor, device) = id
        .split_once(':')
        .and_then(|(v, d)| Some((fixed_hex(v, 4)? as u16, fixed_hex(d, 4)? as u16)))
        .ok_or_else(|| bad("id", id))?;
    let class_text = field("class")?;
    let class = fixed_hex(class_text, 6).ok_or_else(|| bad("class", class_text))?;
    let kind_text = field("kind")?;
    let kind = FunctionKind::parse(kind_text).ok_or_else(|| bad("kind", kind_text))?;
    let parent = match field("parent")? {
        "root" => None,
        p => Some(Bdf::parse(p).ok_or_else(|| bad("parent", p))?),
    };
    let secondary = match field("secondary")? {
        "-" => None,
        s => Some(fixed_hex(s, 2).ok_or_else(|| bad("secondary", s))? as u8),
    };
    let bars = match field("bars")? {
        "-" => Vec::new(),
        list => list
            .split(',')
            .map(|b| {
                let parts: Vec<&str> = b.split(':').collect();
                let [index, ty, address, size] = parts.as_slice() else {
                    return Err(bad("bars", b));
                };
                Ok(ListedBar {
                    index: index
                        .parse()
                        .ok()
                        .filter(|i| *i < 6)
                        .ok_or(bad("bars", b))?,
                    ty: BarType::parse(ty).ok_or(bad("bars", b))?,
                    address: parse_hex(address).ok_or(bad("bars", b))?,
                    size: parse_hex(size).ok_or(bad("bars", b))?,
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let rids_text = field("rids")?;
    let rids = rids_text
        .split(',')
        .map(|r| Bdf::parse(r).ok_or_else(|| bad("rids", rids_text)))
        .collect::<Result<_, _>>()?;
    let group = field("group")?;
    if group.is_empty() {
        return Err(bad("group", group));
    }
    Ok(ListedFunction {
        bdf,
        vendor,
        device,
        class,
        kind,
        parent,
        secondary,
        bars,
        rids,
        group: group.to_string(),
    })
}

/// Parses every `PCIDEV` line of a serial log (other lines are ignored; a trailing `\r` is
/// tolerated). `Err` quotes the first malformed line.
pub fn parse_pci_listing(log: &str) -> Result<Vec<ListedFunction>, String> {
    log.lines()
        .map(|l| l.trim_end_matches('\r').trim())
        .filter(|l| l.starts_with("PCIDEV ") || *l == "PCIDEV")
        .map(|l| parse_line(l).map_err(|e| format!("malformed `{l}`: {e}")))
        .collect()
}
