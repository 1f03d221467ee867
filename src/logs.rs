//! Logging set-up for the binary: text or JSON lines on stderr, and in JSON mode a writer that
//! turns every line a command prints on stdout (the listen address, per-run summaries) into a
//! JSON event of the same shape, so a log shipper that collects both streams parses every line.

use std::io::{self, Write};

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: JSON lines when `json`, else text (ANSI on a terminal).
pub fn init(json: bool) {
    use std::io::IsTerminal;
    // The Delta crates log every snapshot and commit at info: their warnings are enough.
    let quiet = ",buoyant_kernel=warn,deltalake_core=warn";
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() && (v.contains("kernel") || v.contains("deltalake")) => {
            EnvFilter::new(v)
        }
        Ok(v) if !v.trim().is_empty() => EnvFilter::new(format!("{v}{quiet}")),
        _ => EnvFilter::new(format!("info{quiet}")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// One stdout line as a JSON event: `{"timestamp", "level": "INFO", "fields": {"message"},
/// "target": "callsync::stdout"}`, the shape of the stderr events.
pub fn json_line(line: &str) -> String {
    serde_json::json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "level": "INFO",
        "fields": {"message": line},
        "target": "callsync::stdout",
    })
    .to_string()
}

/// Wraps a writer so that each line written becomes a JSON event (`json_line`); a partial line
/// waits for its newline (or `flush`).
pub struct JsonLines<W: Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: Write> JsonLines<W> {
    pub fn new(inner: W) -> Self {
        JsonLines {
            inner,
            pending: Vec::new(),
        }
    }

    fn emit(&mut self, line: &[u8]) -> io::Result<()> {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        writeln!(self.inner, "{}", json_line(text))
    }
}

impl<W: Write> Write for JsonLines<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            self.emit(&line[..line.len() - 1])?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line)?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for JsonLines<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_written_becomes_one_json_event() {
        let mut out = Vec::new();
        {
            let mut w = JsonLines::new(&mut out);
            write!(w, "listening on http://127.0.0.1:1 (health: …)\nvg: 3 rows").unwrap();
            writeln!(w, ", \"quoted\"").unwrap();
            write!(w, "no newline").unwrap();
        }
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let msgs: Vec<&str> = lines
            .iter()
            .map(|v| v["fields"]["message"].as_str().unwrap())
            .collect();
        assert_eq!(
            msgs,
            [
                "listening on http://127.0.0.1:1 (health: …)",
                "vg: 3 rows, \"quoted\"",
                "no newline"
            ]
        );
        assert!(lines.iter().all(|v| v["level"] == "INFO"));
    }
}
