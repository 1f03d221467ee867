//! Voicegain CSV rows → call rows appended to an Arrow batch (or rejects), read as a stream
//! of records with no per-field allocation.

use arrow_array::RecordBatch;

use crate::record::{CallBatchBuilder, CallRow, Reject, StrList};
use crate::sources::SourceError;

use super::KIND;
use super::model::{Columns, is_final_phase, parse_time, trim};

/// What one CSV page held.
#[derive(Debug, Default)]
pub struct ParsedPage {
    /// Calls, in vendor order, up to (not including) the first unfinished call.
    pub calls: Option<RecordBatch>,
    /// Rows that could not be read or normalized.
    pub rejects: Vec<Reject>,
    /// Data rows read (header excluded), including rejects.
    pub rows: usize,
    /// The highest callId on the page that it is safe to resume after.
    pub max_call_id: Option<u64>,
    /// True when the page held a call that is not DONE/ERROR (the export stops there).
    pub stopped_at_open: bool,
    /// Unfinished calls passed over (`skip_open`: time-range queries list them too).
    pub skipped_open: usize,
}

/// Parses one page of the CSV export. An unfinished call ends the page (consecutive export),
/// or with `skip_open` is passed over (time-range export, which lists them too).
pub fn parse_page(
    source_name: &str,
    body: &[u8],
    skip_open: bool,
) -> Result<ParsedPage, SourceError> {
    let protocol = |reason: String| SourceError::Protocol {
        source_name: source_name.to_string(),
        reason,
    };
    // simd-csv splits records with SIMD searches: about twice csv_core's speed on these pages.
    let mut rdr = simd_csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(body);
    let headers = rdr
        .byte_headers()
        .map_err(|e| protocol(format!("cannot read the CSV header: {e}")))?
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
    let Some(id_col) = cols.call_id else {
        return Err(protocol(format!(
            "the CSV has no callId column (columns: {})",
            names.join(",")
        )));
    };
    let keys = json_keys(&names);
    // Sized for the page up front: its raw JSON is about twice its CSV bytes (keys added),
    // and a row is about 400 bytes (a smaller one only makes the builders grow once more).
    let mut builder = CallBatchBuilder::with_capacity(body.len() / 256 + 16, body.len() * 2);
    let mut bytes = simd_csv::ByteRecord::new();
    let mut bounds = Vec::new();
    let mut raw = Vec::with_capacity(1024);
    let mut lower = String::new();
    loop {
        match rdr.read_byte_record(&mut bytes) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                page.rows += 1;
                page.rejects.push(Reject {
                    fingerprint: None,
                    call_id: None,
                    error: format!("unreadable CSV row: {e}"),
                    raw: String::new(),
                });
                continue;
            }
        }
        page.rows += 1;
        let Some(rec) = Row::new(&bytes, &mut bounds) else {
            let lossy: Vec<String> = bytes
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            let raw = raw_json(&keys, lossy.iter().map(String::as_str), &mut raw);
            page.rejects.push(Reject {
                fingerprint: None,
                call_id: lossy.get(id_col).map(|s| s.trim().to_string()),
                error: "row is not valid UTF-8".into(),
                raw: raw.to_string(),
            });
            continue;
        };
        let id_text = trim(rec.get(id_col).unwrap_or(""));
        let call_id = id_text.parse::<u64>().ok();
        let phase = cols.progress_phase.and_then(|i| rec.get(i)).unwrap_or("");
        if !trim(phase).is_empty() && !is_final_phase(phase) {
            if skip_open {
                page.skipped_open += 1;
                continue;
            }
            // The consecutive export should already stop before this row; stop anyway and
            // do not move the cursor past it.
            page.stopped_at_open = true;
            break;
        }
        if let Some(id) = call_id {
            page.max_call_id = Some(page.max_call_id.map_or(id, |m| m.max(id)));
        }
        let raw = raw_json(&keys, rec.iter(), &mut raw);
        if rec.len() != names.len() {
            page.rejects.push(Reject {
                fingerprint: None,
                call_id: call_id.map(|_| id_text.to_string()),
                error: format!("expected {} fields, found {}", names.len(), rec.len()),
                raw: raw.to_string(),
            });
        } else {
            match normalize_row(&cols, &rec, call_id, id_text, raw, &mut lower) {
                Ok(row) => builder.append(&row),
                Err(error) => page.rejects.push(Reject {
                    fingerprint: None,
                    call_id: (!id_text.is_empty()).then(|| id_text.to_string()),
                    error,
                    raw: raw.to_string(),
                }),
            }
        }
    }
    if !builder.is_empty() {
        let batch = builder
            .finish(chrono::Utc::now().timestamp_micros())
            .map_err(|e| protocol(format!("building the batch: {e}")))?;
        page.calls = Some(batch);
    }
    Ok(page)
}

/// One CSV row whose bytes are valid UTF-8 with every field on a character boundary,
/// read in place (no copy into a `StringRecord`).
struct Row<'r> {
    text: &'r str,
    bounds: &'r [std::ops::Range<usize>],
}

impl<'r> Row<'r> {
    /// `bounds` is scratch space for the fields' byte ranges, reused from row to row.
    fn new(
        rec: &'r simd_csv::ByteRecord,
        bounds: &'r mut Vec<std::ops::Range<usize>>,
    ) -> Option<Self> {
        let all = rec.as_slice();
        let text = std::str::from_utf8(all).ok()?;
        bounds.clear();
        // Each field is a slice of the record's bytes: its range is its offset in them.
        let base = all.as_ptr() as usize;
        for field in rec.iter() {
            let start = field.as_ptr() as usize - base;
            let range = start..start + field.len();
            text.get(range.clone())?;
            bounds.push(range);
        }
        Some(Row { text, bounds })
    }

    fn get(&self, i: usize) -> Option<&'r str> {
        self.text.get(self.bounds.get(i)?.clone())
    }

    fn len(&self) -> usize {
        self.bounds.len()
    }

    fn iter(&self) -> impl Iterator<Item = &'r str> + '_ {
        (0..self.len()).map(|i| self.get(i).unwrap_or(""))
    }
}

fn opt(s: &str) -> Option<&str> {
    let t = trim(s);
    (!t.is_empty()).then_some(t)
}

/// Maps one row; the `Err` is the reject reason. `lower` is a scratch buffer for the
/// lowercased direction.
fn normalize_row<'a>(
    cols: &Columns,
    f: &Row<'a>,
    call_id: Option<u64>,
    id_text: &'a str,
    raw: &'a str,
    lower: &'a mut String,
) -> Result<CallRow<'a>, String> {
    let get = |i: Option<usize>| i.and_then(|i| f.get(i)).unwrap_or("");
    if call_id.is_none() {
        return Err(format!("callId {id_text:?} is not a non-negative integer"));
    }
    let start = get(cols.start_time);
    let started_at = parse_time(start)
        .ok_or_else(|| format!("startTime {start:?} is not MM-DD-YYYY h:mm:ss AM/PM"))?;
    let end = get(cols.end_time);
    let ended_at = if trim(end).is_empty() {
        None
    } else {
        Some(
            parse_time(end)
                .ok_or_else(|| format!("endTime {end:?} is not MM-DD-YYYY h:mm:ss AM/PM"))?,
        )
    };
    let dur = trim(get(cols.duration));
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
    let sent = trim(get(cols.sentiment));
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
    let direction = match opt(get(cols.direction)) {
        Some(d) if d.bytes().any(|b| b.is_ascii_uppercase()) => {
            lower.clear();
            lower.push_str(d);
            lower.make_ascii_lowercase();
            Some(lower.as_str())
        }
        other => other,
    };
    let list = |i: Option<usize>| opt(get(i)).map(|s| StrList::Split(s, '|'));
    Ok(CallRow {
        call_id: id_text,
        source_kind: KIND,
        started_at: Some(started_at),
        ended_at,
        duration_ms,
        direction,
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
        tags: list(cols.tags),
        topics: list(cols.topics),
        recording_ref: opt(get(cols.recording)),
        raw,
        ..CallRow::default()
    })
}

/// `"name":` prefixes for each header, JSON-escaped once per page.
fn json_keys(names: &[String]) -> Vec<Vec<u8>> {
    names.iter().map(|n| json_key(n)).collect()
}

fn json_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 3);
    json_escape_simd::escape_into(name, &mut k);
    k.push(b':');
    k
}

/// The row as a JSON object of strings, written into one reused buffer (escaping is the
/// SIMD kernel of `json-escape-simd`). Empty fields are left out: a CSV cell cannot tell
/// empty from absent, and a typical export row has about half of its columns empty.
fn raw_json<'b, 'a>(
    keys: &[Vec<u8>],
    fields: impl Iterator<Item = &'a str>,
    out: &'b mut Vec<u8>,
) -> &'b str {
    out.clear();
    out.push(b'{');
    for (i, value) in fields.enumerate() {
        if value.is_empty() {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        match keys.get(i) {
            Some(k) => out.extend_from_slice(k),
            None => out.extend_from_slice(&json_key(&format!("_extra{i}"))),
        }
        json_escape_simd::escape_into(value, out);
    }
    out.push(b'}');
    // Escaped `str`s joined by ASCII punctuation are UTF-8 by construction.
    std::str::from_utf8(out).expect("escaped UTF-8 pieces are UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;

    const CSV: &str = "callId,startTime,endTime,duration,direction,externalEndpoint,internalEndpoint,agent.name,notes,tags,topics,progressPhase,sentiment\n\
        7,05-12-2024 6:15:45 PM,05-12-2024 6:20:30 PM,274,Inbound,+1469,1469,Joe,\"line one\nsaid \"\"hi\"\"\",A|B||C,x,DONE,0.25\n\
        8,garbage,,1,inbound,,,,,,,ERROR,\n\
        9,05-12-2024 6:15:45 PM,,1,inbound,,,,,,,PROCESSING,\n\
        10,05-12-2024 6:15:45 PM,,1,inbound,,,,,,,DONE,\n";

    #[test]
    fn rows_map_to_the_call_schema_and_bad_rows_become_rejects() {
        let p = parse_page("vg", CSV.as_bytes(), false).unwrap();
        assert!(p.stopped_at_open);
        assert_eq!(p.max_call_id, Some(8));
        let b = p.calls.unwrap();
        assert_eq!(b.num_rows(), 1);
        let s = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .value(0)
                .to_string()
        };
        assert_eq!(s("call_id"), "7");
        assert_eq!(s("direction"), "inbound");
        assert_eq!(s("summary"), "line one\nsaid \"hi\"");
        let dur = b
            .column_by_name("duration_ms")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(dur.value(0), 274_000);
        let tags = b.column_by_name("tags").unwrap().as_list::<i32>();
        let t: Vec<String> = tags
            .value(0)
            .as_string::<i32>()
            .iter()
            .flatten()
            .map(String::from)
            .collect();
        assert_eq!(t, ["A", "B", "C"]);
        let raw: serde_json::Value = serde_json::from_str(&s("raw")).unwrap();
        assert_eq!(raw["notes"], "line one\nsaid \"hi\"");
        assert_eq!(raw["callId"], "7");
        assert!(!b.column_by_name("transcript").unwrap().is_valid(0));
        assert_eq!(p.rejects.len(), 1);
        let r = &p.rejects[0];
        assert_eq!(r.call_id.as_deref(), Some("8"));
        assert!(r.error.contains("startTime"), "{}", r.error);
        assert!(serde_json::from_str::<serde_json::Value>(&r.raw).is_ok());
    }

    #[test]
    fn a_time_range_page_passes_over_unfinished_calls() {
        let p = parse_page("vg", CSV.as_bytes(), true).unwrap();
        assert!(!p.stopped_at_open);
        assert_eq!(p.skipped_open, 1);
        assert_eq!(p.calls.unwrap().num_rows(), 2);
        assert_eq!(p.rows, 4);
    }

    #[test]
    fn crlf_a_byte_order_mark_quoted_line_breaks_and_a_last_line_without_newline() {
        let csv = "\u{feff}callId,startTime,notes,progressPhase\r\n\
            1,05-12-2024 6:15:45 PM,\"a\r\nb \"\"q\"\"\",DONE\r\n\
            2,05-12-2024 6:15:45 PM,,DONE,extra\r\n\
            3,05-12-2024 6:15:45 PM,last,DONE";
        let p = parse_page("vg", csv.as_bytes(), false).unwrap();
        assert_eq!(p.rows, 3);
        assert_eq!(p.max_call_id, Some(3));
        let b = p.calls.unwrap();
        let col = |name: &str| {
            let a = b.column_by_name(name).unwrap().as_string::<i32>();
            (0..a.len())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(col("call_id"), ["1", "3"]);
        assert_eq!(col("summary"), ["a\r\nb \"q\"", "last"]);
        assert_eq!(p.rejects.len(), 1);
        assert_eq!(p.rejects[0].call_id.as_deref(), Some("2"));
        assert!(p.rejects[0].error.contains("expected 4 fields, found 5"));
    }

    #[test]
    fn a_row_that_is_not_utf8_is_rejected_and_the_page_goes_on() {
        let mut csv = b"callId,startTime,notes,progressPhase\n".to_vec();
        csv.extend_from_slice(b"1,05-12-2024 6:15:45 PM,caf\xff,DONE\n");
        csv.extend_from_slice(b"2,05-12-2024 6:15:45 PM,ok,DONE\n");
        let p = parse_page("vg", &csv, false).unwrap();
        assert_eq!(p.calls.unwrap().num_rows(), 1);
        assert_eq!(p.rejects.len(), 1);
        let r = &p.rejects[0];
        assert_eq!(r.call_id.as_deref(), Some("1"));
        assert_eq!(r.error, "row is not valid UTF-8");
        let raw: serde_json::Value = serde_json::from_str(&r.raw).unwrap();
        assert_eq!(raw["notes"], "caf\u{fffd}");
    }

    #[test]
    fn header_only_csv_is_an_empty_page() {
        let p = parse_page("vg", b"callId,startTime\n", false).unwrap();
        assert_eq!(p.rows, 0);
        assert!(p.calls.is_none() && p.rejects.is_empty());
    }

    #[test]
    fn raw_json_escapes_control_characters_quotes_and_long_runs() {
        let fields = [
            "a\u{1}b\"\\\t",
            "plain text that is longer than eight bytes, no escapes at all",
            "0123456\"89abcdef\\ghij\nklmnopq\u{1f}rs é ünïcödé \"end\"",
            "",
            "\"",
        ];
        let names: Vec<String> = ["a", "b\"q", "c", "d"].map(String::from).to_vec();
        let mut buf = Vec::new();
        let raw = raw_json(&json_keys(&names), fields.iter().copied(), &mut buf);
        let v: serde_json::Value = serde_json::from_str(raw).unwrap();
        assert_eq!(v["a"], fields[0]);
        assert_eq!(v["b\"q"], fields[1]);
        assert_eq!(v["c"], fields[2]);
        assert!(v.get("d").is_none(), "an empty field is left out: {v}");
        assert_eq!(v["_extra4"], fields[4]);
    }
}
