//! Voicegain CSV rows → `CallRecord` (or `Reject`), parsed as a stream of records.

use crate::record::{CallRecord, Item, Reject, split_list};
use crate::sources::SourceError;

use super::KIND;
use super::model::{Columns, is_final_phase, parse_time};

/// What one CSV page held.
#[derive(Debug, Default)]
pub struct ParsedPage {
    /// Calls and rejects, in vendor order, up to (not including) the first unfinished call.
    pub items: Vec<Item>,
    /// Data rows read (header excluded), including rejects.
    pub rows: usize,
    /// The highest callId on the page that it is safe to resume after.
    pub max_call_id: Option<u64>,
    /// True when the page held a call that is not DONE/ERROR (the export stops there).
    pub stopped_at_open: bool,
}

/// Parses one page of the CSV export.
pub fn parse_page(source_name: &str, body: &[u8]) -> Result<ParsedPage, SourceError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(body);
    let headers = rdr
        .byte_headers()
        .map_err(|e| SourceError::Protocol {
            source_name: source_name.to_string(),
            reason: format!("cannot read the CSV header: {e}"),
        })?
        .clone();
    let mut page = ParsedPage::default();
    if headers.is_empty() {
        return Ok(page);
    }
    let names: Vec<String> = headers
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();
    let cols = Columns::from_headers(names.iter().map(String::as_str));
    if cols.call_id.is_none() {
        return Err(SourceError::Protocol {
            source_name: source_name.to_string(),
            reason: format!(
                "the CSV has no callId column (columns: {})",
                names.join(",")
            ),
        });
    }
    let keys = json_keys(&names);
    let mut row = csv::ByteRecord::new();
    let mut raw = String::with_capacity(1024);
    loop {
        match rdr.read_byte_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                page.rows += 1;
                page.items.push(Item::Reject(Reject {
                    call_id: None,
                    error: format!("unreadable CSV row: {e}"),
                    raw: String::new(),
                }));
                continue;
            }
        }
        page.rows += 1;
        let mut fields: Vec<&str> = Vec::with_capacity(names.len());
        let mut utf8_ok = true;
        for f in row.iter() {
            match std::str::from_utf8(f) {
                Ok(s) => fields.push(s),
                Err(_) => {
                    utf8_ok = false;
                    break;
                }
            }
        }
        if !utf8_ok {
            let lossy: Vec<String> = row
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            let lossy_refs: Vec<&str> = lossy.iter().map(String::as_str).collect();
            raw_json(&keys, &lossy_refs, &mut raw);
            page.items.push(Item::Reject(Reject {
                call_id: cols
                    .call_id
                    .and_then(|i| lossy.get(i))
                    .map(|s| s.trim().to_string()),
                error: "row is not valid UTF-8".into(),
                raw: std::mem::take(&mut raw),
            }));
            continue;
        }
        let get = |i: Option<usize>| i.and_then(|i| fields.get(i).copied()).unwrap_or("");
        let id_text = get(cols.call_id).trim();
        let call_id = id_text.parse::<u64>().ok();
        if let Some(idx) = cols.progress_phase {
            let phase = fields.get(idx).copied().unwrap_or("");
            if !phase.trim().is_empty() && !is_final_phase(phase) {
                // The consecutive export should already stop before this row; stop anyway and
                // do not move the cursor past it.
                page.stopped_at_open = true;
                break;
            }
        }
        if let Some(id) = call_id {
            page.max_call_id = Some(page.max_call_id.map_or(id, |m| m.max(id)));
        }
        raw_json(&keys, &fields, &mut raw);
        let raw_text = std::mem::replace(&mut raw, String::with_capacity(1024));
        if fields.len() != names.len() {
            page.items.push(Item::Reject(Reject {
                call_id: call_id.map(|_| id_text.to_string()),
                error: format!("expected {} fields, found {}", names.len(), fields.len()),
                raw: raw_text,
            }));
            continue;
        }
        match normalize_row(&cols, &fields, call_id, id_text) {
            Ok(mut rec) => {
                rec.raw = raw_text;
                page.items.push(Item::Call(Box::new(rec)));
            }
            Err(error) => page.items.push(Item::Reject(Reject {
                call_id: (!id_text.is_empty()).then(|| id_text.to_string()),
                error,
                raw: raw_text,
            })),
        }
    }
    Ok(page)
}

fn opt(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Maps one row; the `Err` is the reject reason.
fn normalize_row(
    cols: &Columns,
    f: &[&str],
    call_id: Option<u64>,
    id_text: &str,
) -> Result<CallRecord, String> {
    let get = |i: Option<usize>| i.and_then(|i| f.get(i).copied()).unwrap_or("");
    if call_id.is_none() {
        return Err(format!("callId {id_text:?} is not a non-negative integer"));
    }
    let start = get(cols.start_time);
    let started_at = parse_time(start)
        .ok_or_else(|| format!("startTime {start:?} is not MM-DD-YYYY h:mm:ss AM/PM"))?;
    let end = get(cols.end_time);
    let ended_at = if end.trim().is_empty() {
        None
    } else {
        Some(
            parse_time(end)
                .ok_or_else(|| format!("endTime {end:?} is not MM-DD-YYYY h:mm:ss AM/PM"))?,
        )
    };
    let dur = get(cols.duration).trim();
    let duration_ms = if dur.is_empty() {
        None
    } else {
        let secs: f64 = dur
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("duration {dur:?} is not a number of seconds"))?;
        Some((secs * 1000.0).round() as i64)
    };
    let sent = get(cols.sentiment).trim();
    let sentiment_score = if sent.is_empty() {
        None
    } else {
        Some(
            sent.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("sentiment {sent:?} is not a number"))?,
        )
    };
    Ok(CallRecord {
        call_id: id_text.to_string(),
        source_kind: KIND,
        started_at: Some(started_at),
        ended_at,
        duration_ms,
        direction: opt(get(cols.direction)).map(|d| d.to_ascii_lowercase()),
        // DESIGN.md maps externalEndpoint → from and internalEndpoint → to; for inbound calls
        // (the common case) that is ANI → DNIS. Kept as documented for outbound calls too.
        from_number: opt(get(cols.external_endpoint)),
        to_number: opt(get(cols.internal_endpoint)),
        agent_id: opt(get(cols.agent_id)),
        agent_name: opt(get(cols.agent_name)),
        queue_name: opt(get(cols.queue_name)),
        vendor_status: opt(get(cols.progress_phase)),
        language: opt(get(cols.language)),
        sentiment_score,
        // Notes keep their new lines: only surrounding white space is trimmed.
        summary: opt(get(cols.notes)),
        tags: split_list(get(cols.tags), '|'),
        topics: split_list(get(cols.topics), '|'),
        recording_ref: opt(get(cols.recording)),
        ..CallRecord::default()
    })
}

/// `"name":` prefixes for each header, JSON-escaped once per page.
fn json_keys(names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| {
            let mut k = String::with_capacity(n.len() + 3);
            escape_json_str(n, &mut k);
            k.push(':');
            k
        })
        .collect()
}

/// The row as a JSON object of strings, written into one reused buffer.
fn raw_json(keys: &[String], fields: &[&str], out: &mut String) {
    out.clear();
    out.push('{');
    for (i, value) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match keys.get(i) {
            Some(k) => out.push_str(k),
            None => out.push_str(&format!("\"_extra{i}\":")),
        }
        escape_json_str(value, out);
    }
    out.push('}');
}

/// Appends `s` as a JSON string literal.
/// Escapes are ASCII, so slicing `s` at their positions stays on char boundaries.
fn escape_json_str(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => {
                out.push_str(&s[start..i]);
                out.push_str(&format!("\\u{b:04x}"));
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push_str(esc);
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "callId,startTime,endTime,duration,direction,externalEndpoint,internalEndpoint,agent.name,notes,tags,topics,progressPhase,sentiment\n\
        7,05-12-2024 6:15:45 PM,05-12-2024 6:20:30 PM,274,Inbound,+1469,1469,Joe,\"line one\nsaid \"\"hi\"\"\",A|B||C,x,DONE,0.25\n\
        8,garbage,,1,inbound,,,,,,,ERROR,\n\
        9,05-12-2024 6:15:45 PM,,1,inbound,,,,,,,PROCESSING,\n\
        10,05-12-2024 6:15:45 PM,,1,inbound,,,,,,,DONE,\n";

    #[test]
    fn rows_map_to_the_call_schema_and_bad_rows_become_rejects() {
        let p = parse_page("vg", CSV.as_bytes()).unwrap();
        assert!(p.stopped_at_open);
        assert_eq!(p.max_call_id, Some(8));
        assert_eq!(p.items.len(), 2);
        let Item::Call(c) = &p.items[0] else { panic!() };
        assert_eq!(c.call_id, "7");
        assert_eq!(c.duration_ms, Some(274_000));
        assert_eq!(c.direction.as_deref(), Some("inbound"));
        assert_eq!(c.summary.as_deref(), Some("line one\nsaid \"hi\""));
        assert_eq!(c.tags, Some(vec!["A".into(), "B".into(), "C".into()]));
        assert_eq!(c.sentiment_score, Some(0.25));
        let raw: serde_json::Value = serde_json::from_str(&c.raw).unwrap();
        assert_eq!(raw["notes"], "line one\nsaid \"hi\"");
        assert_eq!(raw["callId"], "7");
        let Item::Reject(r) = &p.items[1] else {
            panic!()
        };
        assert_eq!(r.call_id.as_deref(), Some("8"));
        assert!(r.error.contains("startTime"), "{}", r.error);
        assert!(serde_json::from_str::<serde_json::Value>(&r.raw).is_ok());
    }

    #[test]
    fn header_only_csv_is_an_empty_page() {
        let p = parse_page("vg", b"callId,startTime\n").unwrap();
        assert_eq!(p.rows, 0);
        assert!(p.items.is_empty());
    }

    #[test]
    fn json_escaping_handles_control_characters() {
        let mut out = String::new();
        escape_json_str("a\u{1}b\"\\\t", &mut out);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\u{1}b\"\\\t");
    }
}
