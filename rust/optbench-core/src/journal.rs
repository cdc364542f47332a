//! The journal: every finished request appended to a JSON-lines file the moment it ends, so
//! that a run killed by SIGKILL, the OOM killer or a lost machine still leaves its finished
//! requests on disk.
//!
//! One line per record, written by a dedicated thread (the runtime's workers only hand the
//! record over a channel, so file I/O never sits between two network reads). Each line is
//! written with one `write` call and flushed to the operating system at once: a killed
//! process loses at most the line being written, which the reader skips. (No `fsync`: the
//! journal survives the process, not a power cut of the host.)

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::record::{ErrorKind, RequestRecord, TokenCountSource};

/// A record as one journal line (the record's fields; kinds and sources by their names).
#[derive(Debug, Serialize, Deserialize)]
struct JournalLine {
    request_id: u32,
    warmup: bool,
    scheduled_ns: i64,
    /// Absent in journals written before it existed (then 0: one base URL).
    #[serde(default)]
    base_url_index: u32,
    #[serde(default)]
    session_id: Option<u32>,
    #[serde(default)]
    turn: Option<u32>,
    sent_ns: Option<i64>,
    first_byte_ns: Option<i64>,
    first_token_ns: Option<i64>,
    last_token_ns: Option<i64>,
    done_ns: Option<i64>,
    chunk_times_ns: Vec<i64>,
    chunk_text_bytes: Vec<u32>,
    /// Absent in journals written before it existed (then 1 token per chunk).
    #[serde(default)]
    chunk_tokens: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunk_tokens_source: Option<String>,
    output_text: String,
    /// The reasoning fields: absent in journals written before they existed, and left out of
    /// the lines of requests without reasoning.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    reasoning_text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_reasoning_token_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_reasoning_token_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_answer_token_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reasoning_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answer_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reasoning_token_source: Option<String>,
    output_tokens: Option<u32>,
    token_count_source: Option<String>,
    prompt_tokens: Option<u32>,
    #[serde(default)]
    cached_tokens: Option<u32>,
    http_status: Option<u16>,
    finish_reason: Option<String>,
    server_timings: Option<String>,
    error_kind: Option<String>,
    error_message: Option<String>,
}

impl From<&RequestRecord> for JournalLine {
    fn from(r: &RequestRecord) -> Self {
        JournalLine {
            request_id: r.request_id,
            warmup: r.warmup,
            scheduled_ns: r.scheduled_ns,
            base_url_index: r.base_url_index,
            session_id: r.session_id,
            turn: r.turn,
            sent_ns: r.sent_ns,
            first_byte_ns: r.first_byte_ns,
            first_token_ns: r.first_token_ns,
            last_token_ns: r.last_token_ns,
            done_ns: r.done_ns,
            chunk_times_ns: r.chunk_times_ns.clone(),
            chunk_text_bytes: r.chunk_text_bytes.clone(),
            chunk_tokens: r.chunk_tokens.clone(),
            chunk_tokens_source: r.chunk_tokens_source.map(|s| s.as_str().to_string()),
            output_text: r.output_text.clone(),
            reasoning_text: r.reasoning_text.clone(),
            first_reasoning_token_ns: r.first_reasoning_token_ns,
            last_reasoning_token_ns: r.last_reasoning_token_ns,
            first_answer_token_ns: r.first_answer_token_ns,
            reasoning_tokens: r.reasoning_tokens,
            answer_tokens: r.answer_tokens,
            reasoning_token_source: r.reasoning_token_source.map(|s| s.as_str().to_string()),
            output_tokens: r.output_tokens,
            token_count_source: r.token_count_source.map(|s| s.as_str().to_string()),
            prompt_tokens: r.prompt_tokens,
            cached_tokens: r.cached_tokens,
            http_status: r.http_status,
            finish_reason: r.finish_reason.clone(),
            server_timings: r.server_timings.clone(),
            error_kind: r.error_kind.map(|k| k.as_str().to_string()),
            error_message: r.error_message.clone(),
        }
    }
}

impl JournalLine {
    fn into_record(self) -> std::result::Result<RequestRecord, String> {
        let error_kind = match self.error_kind {
            None => None,
            Some(name) => Some(
                ErrorKind::ALL
                    .iter()
                    .copied()
                    .find(|k| k.as_str() == name)
                    .ok_or_else(|| format!("unknown error kind {name:?}"))?,
            ),
        };
        let source = |name: Option<&str>| match name {
            None => Ok(None),
            Some("usage") => Ok(Some(TokenCountSource::Usage)),
            Some("tokenizer") => Ok(Some(TokenCountSource::Tokenizer)),
            Some("chunks") => Ok(Some(TokenCountSource::Chunks)),
            Some(other) => Err(format!("unknown token count source {other:?}")),
        };
        let token_count_source = source(self.token_count_source.as_deref())?;
        let reasoning_token_source = source(self.reasoning_token_source.as_deref())?;
        let chunk_tokens_source = source(self.chunk_tokens_source.as_deref())?;
        Ok(RequestRecord {
            request_id: self.request_id,
            warmup: self.warmup,
            scheduled_ns: self.scheduled_ns,
            base_url_index: self.base_url_index,
            session_id: self.session_id,
            turn: self.turn,
            sent_ns: self.sent_ns,
            first_byte_ns: self.first_byte_ns,
            first_token_ns: self.first_token_ns,
            last_token_ns: self.last_token_ns,
            done_ns: self.done_ns,
            chunk_times_ns: self.chunk_times_ns,
            chunk_text_bytes: self.chunk_text_bytes,
            chunk_tokens: self.chunk_tokens,
            chunk_tokens_source,
            output_text: self.output_text,
            reasoning_text: self.reasoning_text,
            first_reasoning_token_ns: self.first_reasoning_token_ns,
            last_reasoning_token_ns: self.last_reasoning_token_ns,
            first_answer_token_ns: self.first_answer_token_ns,
            reasoning_tokens: self.reasoning_tokens,
            answer_tokens: self.answer_tokens,
            reasoning_token_source,
            output_tokens: self.output_tokens,
            token_count_source,
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            http_status: self.http_status,
            finish_reason: self.finish_reason,
            server_timings: self.server_timings,
            error_kind,
            error_message: self.error_message,
        })
    }
}

/// Appends records to a journal file from a thread of its own.
#[derive(Debug)]
pub struct JournalWriter {
    tx: Option<mpsc::Sender<RequestRecord>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    path: PathBuf,
}

impl JournalWriter {
    /// Opens `path` for appending (created if missing; its folder must exist) and starts the
    /// writer thread. Fails before any request is sent when the file cannot be opened.
    pub fn create(path: &Path) -> Result<JournalWriter> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| CoreError::config(format!("cannot open the journal {}: {e}", path.display())))?;
        let (tx, rx) = mpsc::channel::<RequestRecord>();
        let thread = std::thread::Builder::new()
            .name("optbench-journal".into())
            .spawn(move || write_lines(file, rx))
            .map_err(|e| CoreError::config(format!("cannot start the journal thread: {e}")))?;
        Ok(JournalWriter { tx: Some(tx), thread: Some(thread), path: path.to_path_buf() })
    }

    /// Hands one finished record to the writer thread (never blocks on the disk).
    pub fn append(&self, record: &RequestRecord) {
        if let Some(tx) = &self.tx {
            // The thread only stops on a write error, reported by `finish`.
            let _ = tx.send(record.clone());
        }
    }

    /// Waits until every record handed over is written; reports a write error (a full disk).
    pub fn finish(mut self) -> Result<()> {
        self.close()
    }

    fn close(&mut self) -> Result<()> {
        drop(self.tx.take());
        match self.thread.take().map(|t| t.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => {
                Err(CoreError::config(format!("writing the journal {} failed: {e}", self.path.display())))
            }
            Some(Err(_)) => Err(CoreError::config(format!("the journal thread for {} panicked", self.path.display()))),
        }
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn write_lines(mut file: File, rx: mpsc::Receiver<RequestRecord>) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(16 * 1024);
    for record in rx {
        line.clear();
        serde_json::to_writer(&mut line, &JournalLine::from(&record)).map_err(std::io::Error::other)?;
        line.push(b'\n');
        // One write per line (O_APPEND): a kill leaves at most one partial last line.
        file.write_all(&line)?;
    }
    file.flush()
}

/// What reading a journal found.
#[derive(Debug, Default)]
pub struct JournalContents {
    /// The records, sorted by request id (the last one kept when an id repeats).
    pub records: Vec<RequestRecord>,
    /// Lines that could not be read (a partial last line after a kill, or damage), by number.
    pub bad_lines: Vec<usize>,
}

/// Reads every complete record of a journal. A partial or damaged line is skipped and
/// counted, never fatal; only a missing or unreadable file is an error.
pub fn read_journal(path: &Path) -> Result<JournalContents> {
    let file =
        File::open(path).map_err(|e| CoreError::config(format!("cannot open the journal {}: {e}", path.display())))?;
    let mut out = JournalContents::default();
    let mut by_id = std::collections::BTreeMap::new();
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|e| CoreError::config(format!("cannot read the journal {}: {e}", path.display())))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<JournalLine>(&line).map_err(|e| e.to_string()).and_then(JournalLine::into_record)
        {
            Ok(record) => {
                by_id.insert(record.request_id, record);
            }
            Err(_) => out.bad_lines.push(i + 1),
        }
    }
    out.records = by_id.into_values().collect();
    // Records journaled before the end-of-run recount: the chunk count, flagged as such.
    for rec in out.records.iter_mut().filter(|r| r.output_tokens.is_none() && !r.chunk_times_ns.is_empty()) {
        rec.output_tokens = Some(rec.chunk_times_ns.len() as u32);
        rec.token_count_source = Some(TokenCountSource::Chunks);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u32, kind: Option<ErrorKind>) -> RequestRecord {
        RequestRecord {
            request_id: id,
            scheduled_ns: 10,
            sent_ns: Some(20),
            first_token_ns: Some(30),
            last_token_ns: Some(50),
            done_ns: Some(55),
            chunk_times_ns: vec![30, 40, 50],
            chunk_text_bytes: vec![1, 2, 3],
            output_text: "a\n\"b\"\u{e9}".into(),
            output_tokens: Some(3),
            token_count_source: Some(TokenCountSource::Usage),
            error_kind: kind,
            error_message: kind.map(|k| format!("{k} happened")),
            ..Default::default()
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_last_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("optbench-journal-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("requests.journal.jsonl");
        let _ = std::fs::remove_file(&path);
        let writer = JournalWriter::create(&path).unwrap();
        writer.append(&record(1, None));
        writer.append(&record(0, Some(ErrorKind::Deadline)));
        writer.finish().unwrap();
        // A kill in the middle of a write leaves a partial line behind.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"request_id": 2, "warmup": fal"#).unwrap();
        drop(f);

        let read = read_journal(&path).unwrap();
        assert_eq!(read.bad_lines, vec![3]);
        assert_eq!(read.records.len(), 2);
        let (r0, r1) = (&read.records[0], &read.records[1]);
        assert_eq!(r0.request_id, 0);
        assert_eq!(r0.error_kind, Some(ErrorKind::Deadline));
        assert_eq!(r0.error_message.as_deref(), Some("deadline happened"));
        assert_eq!(r1.output_text, "a\n\"b\"\u{e9}");
        assert_eq!(r1.chunk_times_ns, vec![30, 40, 50]);
        assert_eq!(r1.token_count_source, Some(TokenCountSource::Usage));
        assert_eq!(r1.ttft_ms(), record(1, None).ttft_ms());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chunk_tokens_round_trip_and_old_lines_without_them_read() {
        let dir = std::env::temp_dir().join(format!("optbench-journal-chunks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("requests.journal.jsonl");
        let _ = std::fs::remove_file(&path);
        let writer = JournalWriter::create(&path).unwrap();
        writer.append(&RequestRecord {
            chunk_tokens: vec![2, 1, 3],
            chunk_tokens_source: Some(TokenCountSource::Usage),
            ..record(0, None)
        });
        writer.finish().unwrap();
        // A line written before `chunk_tokens` existed.
        let mut old = serde_json::to_value(JournalLine::from(&record(1, None))).unwrap();
        old.as_object_mut().unwrap().remove("chunk_tokens");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(f, "{old}").unwrap();
        drop(f);

        let read = read_journal(&path).unwrap();
        assert!(read.bad_lines.is_empty(), "{:?}", read.bad_lines);
        assert_eq!(read.records[0].chunk_tokens, vec![2, 1, 3]);
        assert_eq!(read.records[0].chunk_tokens_source, Some(TokenCountSource::Usage));
        assert!(read.records[1].chunk_tokens.is_empty() && read.records[1].chunk_tokens_source.is_none());
        assert_eq!(read.records[1].itl_ms(), vec![10e-6, 10e-6], "1 token per chunk");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reasoning_fields_round_trip_and_lines_without_reasoning_leave_them_out() {
        let dir = std::env::temp_dir().join(format!("optbench-journal-reasoning-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("requests.journal.jsonl");
        let _ = std::fs::remove_file(&path);
        let thinking = RequestRecord {
            reasoning_text: "hmm \"so\"\n".into(),
            first_reasoning_token_ns: Some(25),
            last_reasoning_token_ns: Some(28),
            first_answer_token_ns: Some(30),
            reasoning_tokens: Some(4),
            answer_tokens: Some(3),
            reasoning_token_source: Some(TokenCountSource::Chunks),
            ..record(0, None)
        };
        let writer = JournalWriter::create(&path).unwrap();
        writer.append(&thinking);
        writer.append(&record(1, None));
        writer.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("\"reasoning_token_source\":\"chunks\""), "{}", lines[0]);
        assert!(!lines[1].contains("reasoning"), "a line without reasoning is as before: {}", lines[1]);

        let read = read_journal(&path).unwrap();
        assert!(read.bad_lines.is_empty());
        let r = &read.records[0];
        assert_eq!(r.reasoning_text, thinking.reasoning_text);
        assert_eq!((r.first_reasoning_token_ns, r.last_reasoning_token_ns), (Some(25), Some(28)));
        assert_eq!(r.first_answer_token_ns, Some(30));
        assert_eq!((r.reasoning_tokens, r.answer_tokens), (Some(4), Some(3)));
        assert_eq!(r.reasoning_token_source, Some(TokenCountSource::Chunks));
        assert_eq!(read.records[1].reasoning_tokens, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_journal_in_a_missing_folder_fails_before_the_run() {
        let err = JournalWriter::create(Path::new("/nonexistent-optbench-dir/j.jsonl")).unwrap_err();
        assert!(err.to_string().contains("cannot open the journal /nonexistent-optbench-dir/j.jsonl"), "{err}");
    }
}
