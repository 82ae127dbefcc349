use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::Arc;

use super::frame::{Parsed, parse_frame};
use super::*;
use crate::config::OnDamage;
use crate::publish::Header;
use crate::publish::Record;

fn record(n: u32) -> Record {
    Record {
        topic: Arc::from("omnichat.messages"),
        key: format!("chat-{}", n % 3),
        headers: vec![
            (Header::Borrowed("ce_id"), Header::Owned(format!("id-{n}"))),
            (
                Header::Borrowed("content-type"),
                Header::Borrowed("application/json"),
            ),
        ],
        value: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("omnichat-bridge-log-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Writes `count` records in one segment and returns the dir, the segment and each record's end.
fn write_log(name: &str, count: u32) -> (PathBuf, u64, Vec<u64>) {
    let dir = temp_dir(name);
    let recovered = recover(&dir, OnDamage::Refuse).expect("empty spool");
    let segment = recovered.next_segment;
    drop(recovered);
    let mut writer = SegmentWriter::new(&dir, segment, 1 << 20);
    let ends = (0..count)
        .map(|n| {
            let (end, _) = writer
                .append(&encode(&record(n), 1_000 + u64::from(n)))
                .expect("append");
            end.offset
        })
        .collect();
    (dir, segment, ends)
}

fn read_all(dir: &Path, from: Position, end: Position) -> Vec<Entry> {
    let mut reader = SegmentReader::new(dir, from);
    let mut entries = Vec::new();
    while let Some((entry, _)) = reader.next(end).expect("read") {
        entries.push(entry);
    }
    entries
}

#[test]
fn a_record_reads_back_as_it_was_written() {
    let original = record(7);
    let frame = encode(&original, 42);
    match parse_frame(&frame, &mut Vec::new()) {
        Parsed::Frame(entry, len) => {
            assert_eq!(entry.accepted_ms, 42);
            assert_eq!(entry.record, original);
            assert_eq!(len as usize, frame.len());
        }
        _ => panic!("frame not read back"),
    }
    for cut in 0..frame.len() {
        assert!(
            matches!(
                parse_frame(&frame[..cut], &mut Vec::new()),
                Parsed::Incomplete(_)
            ),
            "{cut} bytes are not a frame yet"
        );
    }
    assert!(matches!(
        parse_frame(&[0; 64], &mut Vec::new()),
        Parsed::Zeros
    ));
}

#[test]
fn records_read_back_in_order_and_recovery_counts_them() {
    let (dir, segment, ends) = write_log("order", 50);
    let end = Position {
        segment,
        offset: *ends.last().expect("ends"),
    };
    let entries = read_all(&dir, Position::start_of(segment), end);
    let ids: Vec<_> = entries
        .iter()
        .map(|e| e.record.header("ce_id").unwrap_or_default().to_owned())
        .collect();
    let expected: Vec<_> = (0..50).map(|n| format!("id-{n}")).collect();
    assert_eq!(ids, expected);

    let recovered = recover(&dir, OnDamage::Refuse).expect("recover");
    assert_eq!(recovered.records, 50);
    assert_eq!(recovered.start, Position::start_of(segment));
    assert_eq!(recovered.cut_bytes, 0);
    assert!(recovered.next_segment > segment);
}

#[test]
fn a_torn_tail_is_cut_at_every_possible_length() {
    let (dir, segment, ends) = write_log("torn", 3);
    let path = segment_path(&dir, segment);
    let full = std::fs::read(&path).expect("segment");
    // Every length a crash mid-write could leave, in the last record.
    for len in (ends[1] as usize + 1)..full.len() {
        std::fs::write(&path, &full[..len]).expect("tear");
        let recovered = recover(&dir, OnDamage::Refuse).expect("recover");
        assert_eq!(recovered.records, 2, "torn at {len}");
        assert_eq!(recovered.cut_bytes, (len as u64) - ends[1], "torn at {len}");
        drop(recovered);
        assert_eq!(std::fs::metadata(&path).expect("cut").len(), ends[1]);
        // Recovery leaves an empty new segment behind; remove it so the next round is alike.
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let entry = entry.expect("entry");
            if entry.path() != path && entry.path().extension().is_some_and(|e| e == "seg") {
                std::fs::remove_file(entry.path()).expect("remove");
            }
        }
    }
}

/// Five records in the newest segment, one byte of the third changed: the records after it
/// were acknowledged, so this is damage, not a torn tail.
fn damaged_log(name: &str) -> (PathBuf, u64, Vec<u64>) {
    let (dir, segment, ends) = write_log(name, 5);
    let path = segment_path(&dir, segment);
    let mut bytes = std::fs::read(&path).expect("segment");
    bytes[ends[2] as usize - 3] ^= 0x40;
    std::fs::write(&path, &bytes).expect("corrupt");
    (dir, segment, ends)
}

#[test]
fn a_damaged_record_with_records_after_it_refuses_the_start_naming_file_and_offset() {
    let (dir, segment, ends) = damaged_log("corrupt");
    let path = segment_path(&dir, segment);
    let before = std::fs::read(&path).expect("segment");
    let error = recover(&dir, OnDamage::Refuse).expect_err("damage refused");
    let line = error.to_string();
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert!(line.contains(&format!("byte {}", ends[1])), "{line}");
    assert!(line.contains("BRIDGE_SPOOL_ON_DAMAGE"), "{line}");
    assert!(!line.contains('\n'), "one line: {line}");
    assert_eq!(
        std::fs::read(&path).expect("segment"),
        before,
        "nothing cut"
    );
}

#[test]
fn damage_in_a_sealed_segment_refuses_the_start_even_in_its_last_record() {
    let (dir, segment, ends) = write_log("sealed", 3);
    let mut newer = SegmentWriter::new(&dir, segment + 1, 1 << 20);
    newer.append(&encode(&record(3), 3)).expect("append");
    let path = segment_path(&dir, segment);
    // A sealed segment cut short in its last record: it was complete when it was sealed.
    let file = OpenOptions::new().write(true).open(&path).expect("segment");
    file.set_len(ends[2] - 1).expect("cut");
    let error = recover(&dir, OnDamage::Refuse).expect_err("refused");
    assert!(
        error.to_string().contains(&format!("byte {}", ends[1])),
        "{error}"
    );
}

#[test]
fn set_aside_moves_the_damaged_segment_to_quarantine_and_keeps_the_records_before_it() {
    let (dir, segment, ends) = damaged_log("set-aside");
    let path = segment_path(&dir, segment);
    let original = std::fs::read(&path).expect("segment");
    let recovered = recover(&dir, OnDamage::SetAside).expect("goes on");
    assert_eq!(recovered.records, 2);
    assert_eq!(recovered.set_aside_segments, 1);
    assert_eq!(recovered.cut_bytes, 0, "damage is not a torn tail");
    let quarantined = dir.join(QUARANTINE).join(format!(
        "damaged-at-{}-{}",
        ends[1],
        path.file_name().and_then(|n| n.to_str()).expect("name")
    ));
    assert_eq!(
        std::fs::read(&quarantined).expect("quarantined copy"),
        original,
        "the whole segment, as found"
    );
    drop(recovered);
    let ids: Vec<_> = read_all(
        &dir,
        Position::start_of(segment),
        Position::start_of(segment + 1),
    )
    .iter()
    .map(|e| e.record.header("ce_id").unwrap_or_default().to_owned())
    .collect();
    assert_eq!(ids, ["id-0", "id-1"]);
}

#[test]
fn the_reader_stops_at_damage_in_a_sealed_segment_instead_of_skipping_it() {
    let (dir, segment, ends) = damaged_log("reader");
    let mut newer = SegmentWriter::new(&dir, segment + 1, 1 << 20);
    let (end, _) = newer.append(&encode(&record(5), 5)).expect("append");
    let mut reader = SegmentReader::new(&dir, Position::start_of(segment));
    assert!(reader.next(end).expect("first").is_some());
    assert!(reader.next(end).expect("second").is_some());
    let error = reader
        .next(end)
        .expect_err("damage is an error, not a skip");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert!(
        error.to_string().contains(&format!("byte {}", ends[1])),
        "{error}"
    );
}

#[test]
fn a_writer_creates_its_segment_only_when_the_first_record_comes() {
    let dir = temp_dir("lazy");
    drop(recover(&dir, OnDamage::Refuse).expect("empty spool"));
    let mut writer = SegmentWriter::new(&dir, 3, 1 << 20);
    assert!(!segment_path(&dir, 3).exists(), "nothing written at start");
    let (end, grown) = writer.append(&encode(&record(0), 0)).expect("append");
    assert_eq!(end.segment, 3);
    assert_eq!(
        grown, end.offset,
        "the header is counted with the first record"
    );
}

#[test]
fn a_checkpoint_resumes_after_what_was_acknowledged() {
    let (dir, segment, ends) = write_log("checkpoint", 10);
    let acknowledged = Position {
        segment,
        offset: ends[3],
    };
    write_checkpoint(&dir, acknowledged).expect("checkpoint");
    let recovered = recover(&dir, OnDamage::Refuse).expect("recover");
    assert_eq!(recovered.start, acknowledged);
    assert_eq!(recovered.records, 6);
    let end = Position {
        segment,
        offset: ends[9],
    };
    let first = &read_all(&dir, recovered.start, end)[0];
    assert_eq!(first.record.header("ce_id"), Some("id-4"));
    assert_eq!(first.accepted_ms, 1_004);
}

#[test]
fn an_unreadable_checkpoint_resends_from_the_oldest_segment() {
    let (dir, segment, ends) = write_log("bad-checkpoint", 4);
    write_checkpoint(
        &dir,
        Position {
            segment,
            offset: ends[2],
        },
    )
    .expect("checkpoint");
    let path = dir.join(CHECKPOINT);
    let mut bytes = std::fs::read(&path).expect("checkpoint");
    bytes[10] ^= 1;
    std::fs::write(&path, &bytes).expect("corrupt");
    let recovered = recover(&dir, OnDamage::Refuse).expect("recover");
    assert_eq!(recovered.start, Position::start_of(segment));
    assert_eq!(recovered.records, 4);
}

#[test]
fn segments_before_the_checkpoint_are_deleted_at_start() {
    let (dir, segment, _) = write_log("reclaim", 2);
    let mut next = SegmentWriter::new(&dir, segment + 1, 1 << 20);
    let (end, _) = next.append(&encode(&record(9), 9)).expect("append");
    write_checkpoint(&dir, Position::start_of(segment + 1)).expect("checkpoint");
    let recovered = recover(&dir, OnDamage::Refuse).expect("recover");
    assert!(!segment_path(&dir, segment).exists());
    assert_eq!(recovered.records, 1);
    assert_eq!(recovered.bytes, end.offset);
}

#[test]
fn another_format_version_is_refused_naming_the_file() {
    let (dir, segment, _) = write_log("version", 1);
    let path = segment_path(&dir, segment);
    let mut bytes = std::fs::read(&path).expect("segment");
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&path, &bytes).expect("rewrite");
    let error = recover(&dir, OnDamage::Refuse)
        .expect_err("version 2 refused")
        .to_string();
    assert!(error.contains("format version 2"), "{error}");
    assert!(error.contains(&format!("{segment:020}.seg")), "{error}");
}

#[test]
fn a_second_process_cannot_open_the_same_spool() {
    let dir = temp_dir("lock");
    let first = recover(&dir, OnDamage::Refuse).expect("first");
    let error = recover(&dir, OnDamage::Refuse).expect_err("second refused");
    assert!(matches!(error, SpoolDirError::Locked { .. }), "{error}");
    drop(first);
    recover(&dir, OnDamage::Refuse).expect("free again once the first is gone");
}

#[test]
fn the_reader_crosses_into_the_next_segment() {
    let (dir, segment, _) = write_log("roll", 3);
    let mut next = SegmentWriter::new(&dir, segment + 1, 1 << 20);
    let (end, _) = next.append(&encode(&record(3), 3)).expect("append");
    let entries = read_all(&dir, Position::start_of(segment), end);
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[3].record.header("ce_id"), Some("id-3"));
}

#[test]
fn records_read_back_across_many_rolled_segments_and_a_zero_tail_is_a_clean_end() {
    let dir = temp_dir("rolls");
    drop(recover(&dir, OnDamage::Refuse).expect("empty spool"));
    let mut writer = SegmentWriter::new(&dir, 0, 64 << 10);
    let mut end = writer.end();
    for n in 0..2000 {
        let (at, _) = writer
            .append(&encode(&record(n), u64::from(n)))
            .expect("append");
        end = at;
    }
    assert!(end.segment >= 2, "rolled to {end:?}");
    let entries = read_all(&dir, Position::start_of(0), end);
    let ids: Vec<_> = entries
        .iter()
        .map(|e| e.record.header("ce_id").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        ids,
        (0..2000).map(|n| format!("id-{n}")).collect::<Vec<_>>()
    );

    // A power loss can leave a file extended with zeros no fsync completed for.
    drop(writer);
    let path = segment_path(&dir, end.segment);
    let file = OpenOptions::new().write(true).open(&path).expect("segment");
    file.set_len(end.offset + 4096).expect("zero tail");
    let recovered = recover(&dir, OnDamage::Refuse).expect("recover");
    assert_eq!(recovered.records, 2000);
    assert_eq!(recovered.cut_bytes, 0, "zeros are not a torn record");
    assert_eq!(std::fs::metadata(&path).expect("trimmed").len(), end.offset);
}

#[test]
fn a_reader_never_reads_past_the_committed_end() {
    let dir = temp_dir("bounded");
    drop(recover(&dir, OnDamage::Refuse).expect("empty spool"));
    let mut writer = SegmentWriter::new(&dir, 0, 1 << 20);
    let (first, _) = writer.append(&encode(&record(0), 0)).expect("append");
    // On disk, but past the end the reader is given: as if not yet committed.
    let (second, _) = writer.append(&encode(&record(1), 1)).expect("append");
    let mut reader = SegmentReader::new(&dir, Position::start_of(0));
    let (entry, after) = reader.next(first).expect("read").expect("the first record");
    assert_eq!(entry.record.header("ce_id"), Some("id-0"));
    assert_eq!(after, first);
    assert!(
        reader.next(first).expect("read").is_none(),
        "the second record is past the end"
    );
    let (entry, after) = reader
        .next(second)
        .expect("read")
        .expect("the second record");
    assert_eq!(entry.record.header("ce_id"), Some("id-1"));
    assert_eq!(after, second);
}
