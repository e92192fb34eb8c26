//! Compressed blocks (`compression = "zstd"`): a run of record lines, exactly as an
//! uncompressed segment holds them (each with its own CRC), compressed as one zstd
//! frame behind a header line:
//!
//! ```text
//! #zstd <length of the frame in bytes> <crc32c of the frame, 8 lowercase hex>\n
//! <the frame>\n
//! ```
//!
//! A segment may hold record lines and blocks in any mix (a log written before
//! compression was turned on, or after it was turned off, goes on in the same
//! segment). A record line starts with a hex digit, a block with `#`. Change events
//! repeat their field names, table and position fields, so a block of them compresses
//! about 25 times (bench/binlog_throughput.sh), and the disk stops bounding the log.

use std::io::{BufRead, Read};

/// What a block's header line starts with.
const MARK: &[u8] = b"#zstd ";

/// Records gather up to about this many bytes before they are compressed as a block:
/// large enough to compress well, small enough that a follower sees records soon
/// (a checkpoint writes what gathered, too).
pub const BLOCK_BYTES: usize = 256 << 10;

/// zstd's fastest standard level: 1 GB/s of change events on one core, 25x smaller.
const LEVEL: i32 = 1;

/// Compresses blocks, keeping zstd's context between them.
pub struct Encoder {
    zstd: zstd::bulk::Compressor<'static>,
    frame: Vec<u8>,
}

impl Encoder {
    pub fn new() -> std::io::Result<Self> {
        Ok(Encoder {
            zstd: zstd::bulk::Compressor::new(LEVEL)?,
            frame: Vec::new(),
        })
    }

    /// Appends the block of `records` (whole record lines) to `out`.
    pub fn write(&mut self, records: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        self.frame.clear();
        self.frame
            .reserve(zstd::zstd_safe::compress_bound(records.len()));
        self.zstd.compress_to_buffer(records, &mut self.frame)?;
        let crc = crc32c::crc32c(&self.frame);
        out.extend_from_slice(MARK);
        out.extend_from_slice(itoa::Buffer::new().format(self.frame.len()).as_bytes());
        out.push(b' ');
        out.extend_from_slice(&super::crc_hex(crc));
        out.push(b'\n');
        out.extend_from_slice(&self.frame);
        out.push(b'\n');
        Ok(())
    }
}

/// An `Encoder` on a thread of its own, one block at a time: the pipeline gathers the
/// next block's records while the previous one is compressed (zstd was a sixth of the
/// log sink's CPU on the pipeline's thread).
pub struct Compressor {
    to: std::sync::mpsc::SyncSender<Vec<u8>>,
    from: std::sync::mpsc::Receiver<std::io::Result<(Vec<u8>, Vec<u8>)>>,
}

impl Compressor {
    pub fn new() -> std::io::Result<Self> {
        let mut encoder = Encoder::new()?;
        let (to, records) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let (done, from) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("tributary-zstd".into())
            .spawn(move || {
                // Ends when the journal drops its end of the channel.
                for records in records {
                    let mut block = Vec::with_capacity(records.len() / 8 + 64);
                    let made = encoder
                        .write(&records, &mut block)
                        .map(|_| (block, records));
                    if done.send(made).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Compressor { to, from })
    }

    /// Hands over whole record lines to compress; `take` returns their block.
    pub fn give(&self, records: Vec<u8>) -> std::io::Result<()> {
        self.to.send(records).map_err(|_| gone())
    }

    /// The block of the records given last (waiting for it), and their buffer back.
    pub fn take(&self) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
        self.from.recv().map_err(|_| gone())?
    }
}

fn gone() -> std::io::Error {
    std::io::Error::other("the zstd thread ended")
}

/// A block's header line (with its `\n`): the frame's length and CRC. None when the
/// line is not a block header (a record line); an error for a damaged header.
fn header(line: &[u8]) -> Option<Result<(usize, u32), &'static str>> {
    let rest = line.strip_prefix(MARK)?;
    let parsed = (|| {
        let text = std::str::from_utf8(rest.strip_suffix(b"\n")?).ok()?;
        let (len, crc) = text.split_once(' ')?;
        if crc.len() != 8 {
            return None;
        }
        Some((len.parse().ok()?, u32::from_str_radix(crc, 16).ok()?))
    })();
    Some(parsed.ok_or("bad block header (expected `#zstd <length> <crc32c hex>`)"))
}

/// Reads the next unit of a segment (a record line, or a block's header and frame)
/// onto the end of `unit`, which holds what an earlier call read of it. Whether the
/// unit is complete now: false when the segment ends inside it (a follower waits for
/// the rest; a reader of a finished log reports it).
pub fn read_unit(reader: &mut impl BufRead, unit: &mut Vec<u8>) -> std::io::Result<bool> {
    let line_end = match unit.iter().position(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => {
            reader.read_until(b'\n', unit)?;
            if unit.last() != Some(&b'\n') {
                return Ok(false);
            }
            unit.len()
        }
    };
    let Some(Ok((len, _))) = header(&unit[..line_end]) else {
        return Ok(true); // a record line, or a damaged header the caller reports
    };
    let whole = line_end + len + 1;
    if unit.len() < whole {
        reader.take((whole - unit.len()) as u64).read_to_end(unit)?;
    }
    Ok(unit.len() >= whole)
}

/// The record lines of a complete unit: the unit itself when it is a record line, the
/// frame's content (its CRC checked, decompressed) when it is a block.
pub fn record_lines(unit: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, &'static str> {
    let line_end = unit
        .iter()
        .position(|&b| b == b'\n')
        .map_or(unit.len(), |i| i + 1);
    let (len, crc) = match header(&unit[..line_end]) {
        None => return Ok(unit.into()),
        Some(parsed) => parsed?,
    };
    let frame = &unit[line_end..];
    if frame.len() < len + 1 {
        return Err("incomplete block at the end of the segment (written after the last checkpoint; the daemon cuts it on its next start)");
    }
    if frame[len] != b'\n' {
        return Err("block length does not match its header");
    }
    let frame = &frame[..len];
    if crc32c::crc32c(frame) != crc {
        return Err("block CRC mismatch: the block is corrupt");
    }
    let mut out = Vec::new();
    zstd::stream::read::Decoder::with_buffer(frame)
        .and_then(|mut d| d.read_to_end(&mut out))
        .map_err(|_| "block does not decompress: the block is corrupt")?;
    if out.last() != Some(&b'\n') {
        return Err("block does not end with a whole record");
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: &str) -> Vec<u8> {
        format!("{:08x} {json}\n", crc32c::crc32c(json.as_bytes())).into_bytes()
    }

    #[test]
    fn a_block_reads_back_as_its_record_lines() {
        let records: Vec<u8> = (0..100)
            .flat_map(|i| line(&format!("{{\"op\":\"c\",\"n\":{i}}}")))
            .collect();
        let mut seg = line("{\"plain\":true}");
        Encoder::new().unwrap().write(&records, &mut seg).unwrap();
        seg.extend(line("{\"after\":1}"));
        assert!(seg.len() < records.len() / 2, "compressed: {}", seg.len());
        let mut reader = std::io::Cursor::new(&seg);
        let mut units = Vec::new();
        loop {
            let mut unit = Vec::new();
            let complete = read_unit(&mut reader, &mut unit).unwrap();
            if unit.is_empty() {
                break;
            }
            assert!(complete);
            units.push(record_lines(&unit).unwrap().into_owned());
        }
        assert_eq!(units.len(), 3);
        assert_eq!(units[0], line("{\"plain\":true}"));
        assert_eq!(units[1], records);
        assert_eq!(units[2], line("{\"after\":1}"));
    }

    #[test]
    fn a_block_read_in_pieces_completes_once_all_is_there() {
        let mut block = Vec::new();
        Encoder::new()
            .unwrap()
            .write(&line("{\"a\":1}"), &mut block)
            .unwrap();
        for cut in [3, 10, block.len() - 1] {
            let mut unit = Vec::new();
            let first = &block[..cut];
            assert!(!read_unit(&mut std::io::Cursor::new(first), &mut unit).unwrap());
            let rest = &block[unit.len()..];
            assert!(read_unit(&mut std::io::Cursor::new(rest), &mut unit).unwrap());
            assert_eq!(unit, block);
        }
    }

    #[test]
    fn damage_anywhere_in_a_block_is_an_error_not_wrong_records() {
        let mut block = Vec::new();
        let records: Vec<u8> = (0..20)
            .flat_map(|i| line(&format!("{{\"n\":{i}}}")))
            .collect();
        Encoder::new().unwrap().write(&records, &mut block).unwrap();
        for at in 0..block.len() {
            let mut bad = block.clone();
            bad[at] ^= 0x40;
            let mut unit = Vec::new();
            let _ = read_unit(&mut std::io::Cursor::new(&bad), &mut unit);
            // Where the flipped byte made the header into something else, whatever
            // it reads as is not these records.
            if let Ok(lines) = record_lines(&unit) {
                assert_ne!(&*lines, &records[..], "byte {at}");
            }
        }
    }
}
