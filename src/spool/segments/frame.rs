//! One record as one frame: its encoding, and reading frames back from a segment file.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{FRAME_HEAD, MAX_FRAME};
use crate::event::headers;
use crate::publish::Record;

/// Encodes a record as one frame, ready to append.
pub fn encode(record: &Record, accepted_ms: u64) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEAD + 64 + record.size());
    frame.extend_from_slice(&[0; FRAME_HEAD]);
    frame.extend_from_slice(&accepted_ms.to_le_bytes());
    put(&mut frame, record.topic.as_bytes());
    put(&mut frame, record.key.as_bytes());
    frame.extend_from_slice(&(record.headers.len() as u32).to_le_bytes());
    for (name, value) in &record.headers {
        put(&mut frame, name.as_bytes());
        put(&mut frame, value.as_bytes());
    }
    put(&mut frame, &record.value);
    let length = (frame.len() - FRAME_HEAD) as u32;
    let crc = crc32fast::hash(&frame[FRAME_HEAD..]);
    frame[..4].copy_from_slice(&length.to_le_bytes());
    frame[4..FRAME_HEAD].copy_from_slice(&crc.to_le_bytes());
    frame
}

fn put(frame: &mut Vec<u8>, bytes: &[u8]) {
    frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    frame.extend_from_slice(bytes);
}

/// A record read back, with when it was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub accepted_ms: u64,
    pub record: Record,
}

/// Header names the bridge writes; read back as constants rather than allocated per record.
const KNOWN_HEADERS: [&str; 13] = [
    headers::SPECVERSION,
    headers::ID,
    headers::SOURCE,
    headers::TYPE,
    headers::TIME,
    headers::SUBJECT,
    headers::CONTENT_TYPE,
    headers::TRACEPARENT,
    headers::ERROR_CODE,
    headers::ERROR_MESSAGE,
    headers::WEBHOOK_ID,
    headers::RECEIVED_AT,
    headers::ORIGINAL_TOPIC,
];

/// Decodes a payload whose checksum matched. `topics` keeps the topic names seen, so records
/// share them instead of allocating each.
fn decode(payload: &[u8], topics: &mut Vec<Arc<str>>) -> Option<Entry> {
    let mut rest = payload;
    let accepted_ms = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
    let topic = std::str::from_utf8(take_field(&mut rest)?).ok()?;
    let topic = match topics.iter().find(|known| &***known == topic) {
        Some(known) => known.clone(),
        None => {
            let fresh: Arc<str> = Arc::from(topic);
            topics.push(fresh.clone());
            fresh
        }
    };
    let key = text(take_field(&mut rest)?)?;
    let count = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = std::str::from_utf8(take_field(&mut rest)?).ok()?;
        let name = match KNOWN_HEADERS.iter().find(|known| **known == name) {
            Some(known) => Cow::Borrowed(*known),
            None => Cow::Owned(name.to_owned()),
        };
        let value = text(take_field(&mut rest)?)?;
        headers.push((name, Cow::Owned(value)));
    }
    let value = take_field(&mut rest)?.to_vec();
    rest.is_empty().then_some(Entry {
        accepted_ms,
        record: Record {
            topic,
            key,
            headers,
            value,
        },
    })
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn take_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = u32::from_le_bytes(take(rest, 4)?.try_into().ok()?) as usize;
    take(rest, n)
}

fn text(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

/// What the bytes at a position hold.
pub(super) enum Parsed {
    /// A whole, intact record and the frame's size.
    Frame(Entry, u64),
    /// Not enough bytes yet: at least this many are needed.
    Incomplete(usize),
    /// A zero length and checksum: nothing was written here (or zeros after a power loss).
    Zeros,
    /// Not a frame: an impossible length, a checksum that does not match, or a record that
    /// does not decode.
    Corrupt(&'static str),
}

pub(super) fn parse_frame(bytes: &[u8], topics: &mut Vec<Arc<str>>) -> Parsed {
    let Some(head) = bytes.get(..FRAME_HEAD) else {
        return Parsed::Incomplete(FRAME_HEAD);
    };
    let length = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if length == 0 {
        return if crc == 0 {
            Parsed::Zeros
        } else {
            Parsed::Corrupt("an empty frame")
        };
    }
    if length > MAX_FRAME {
        return Parsed::Corrupt("an impossible frame length");
    }
    let Some(payload) = bytes.get(FRAME_HEAD..FRAME_HEAD + length) else {
        return Parsed::Incomplete(FRAME_HEAD + length);
    };
    if crc32fast::hash(payload) != crc {
        return Parsed::Corrupt("a checksum that does not match");
    }
    match decode(payload, topics) {
        Some(entry) => Parsed::Frame(entry, (FRAME_HEAD + length) as u64),
        None => Parsed::Corrupt("a record that does not decode"),
    }
}

/// What a [`FrameReader`] finds at an offset.
pub(super) enum Found {
    Frame(Entry, u64),
    /// Nothing at all before the limit: the end of what was written.
    End,
    /// Part of a frame, then the end: a write cut short.
    Torn,
    Zeros,
    Corrupt(&'static str),
}

/// How much a [`FrameReader`] reads at once.
const READ_CHUNK: usize = 256 << 10;

/// Reads frames from one segment file with positioned reads. Its buffer never holds bytes
/// past the limit it is given (the committed end), so what it serves was fully written.
#[derive(Debug)]
pub(super) struct FrameReader {
    pub(super) file: File,
    buffer: Vec<u8>,
    /// The file offset of `buffer[0]`.
    start: u64,
}

impl FrameReader {
    pub(super) fn new(file: File) -> Self {
        Self {
            file,
            buffer: Vec::new(),
            start: 0,
        }
    }

    /// The frame at `offset`, reading nothing at or past `limit`.
    pub(super) fn frame_at(
        &mut self,
        offset: u64,
        limit: u64,
        topics: &mut Vec<Arc<str>>,
    ) -> io::Result<Found> {
        loop {
            let buffered = offset
                .checked_sub(self.start)
                .and_then(|skip| self.buffer.get(skip as usize..))
                .unwrap_or_default();
            let have = buffered.len();
            let needed = match parse_frame(buffered, topics) {
                Parsed::Incomplete(needed) => needed,
                Parsed::Frame(entry, len) => return Ok(Found::Frame(entry, len)),
                Parsed::Zeros => return Ok(Found::Zeros),
                Parsed::Corrupt(what) => return Ok(Found::Corrupt(what)),
            };
            let end_here = |have: usize| if have == 0 { Found::End } else { Found::Torn };
            let want = (needed.max(READ_CHUNK) as u64).min(limit.saturating_sub(offset)) as usize;
            if want <= have {
                // Nothing more may be read: the end of what is committed.
                return Ok(end_here(have));
            }
            self.buffer.resize(want, 0);
            let mut read = 0;
            while read < want {
                match self
                    .file
                    .read_at(&mut self.buffer[read..], offset + read as u64)
                {
                    Ok(0) => break,
                    Ok(n) => read += n,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
            self.buffer.truncate(read);
            self.start = offset;
            if read <= have {
                // The end of the file: cleanly between frames, or inside a torn one.
                return Ok(end_here(read));
            }
        }
    }

    /// Whether every byte from `offset` to the end of the file is zero.
    pub(super) fn zeros_from(&self, offset: u64) -> io::Result<bool> {
        let mut chunk = vec![0; READ_CHUNK];
        let mut at = offset;
        loop {
            let n = match self.file.read_at(&mut chunk, at) {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if chunk[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
    }
}
