//! The encoded exposition: each part as raw deflate segments that concatenate into one gzip
//! member, and as text. A snapshot's families are cut into chunks, and a chunk whose text did not
//! change keeps its compressed bytes, so a cycle that changed little compresses little.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::metrics::{halfway, in_parallel};

/// One part of the exposition, encoded as a raw deflate segment that ends on a byte boundary (sync
/// flush, or the final block for the last part), so segments concatenate; and as text. A snapshot's
/// text (tens of MB at a million runs) is not kept: Prometheus always asks for gzip, so it is
/// inflated again on the first scrape that asks for plain text, and kept until the next snapshot.
#[derive(Debug)]
pub(crate) struct Segment {
    text: OnceLock<Bytes>,
    len: usize,
    /// [`chunk_hash`] of the text.
    hash: u64,
    deflate: Bytes,
    crc: crc32fast::Hasher,
}

impl Segment {
    pub(crate) fn empty() -> Segment {
        Segment::new(Vec::new(), Compression::fast(), false, true)
    }

    pub(crate) fn new(text: Vec<u8>, level: Compression, last: bool, keep_text: bool) -> Segment {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&text);
        let deflate = deflate(&text, level, last);
        let kept = OnceLock::new();
        let len = text.len();
        let hash = chunk_hash(&text);
        if keep_text {
            let _ = kept.set(Bytes::from(text));
        }
        Segment {
            text: kept,
            len,
            hash,
            deflate: deflate.into(),
            crc,
        }
    }

    fn text(&self) -> Bytes {
        self.text
            .get_or_init(|| inflate(&self.deflate, self.len).into())
            .clone()
    }
}

/// Inflates a raw deflate segment (ended by a sync flush or a final block) of `len` bytes of text.
fn inflate(segment: &[u8], len: usize) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(len);
    while (d.total_in() as usize) < segment.len() && out.len() < len {
        let done = d.total_in() as usize;
        // The segment is our own output: an error would be a bug, and leaves the text short.
        match d.decompress_vec(&segment[done..], &mut out, FlushDecompress::Sync) {
            Ok(Status::StreamEnd) | Err(_) => break,
            Ok(_) if d.total_in() as usize == done && out.len() < out.capacity() => break,
            Ok(_) => out.reserve(64 * 1024),
        }
    }
    out
}

/// Raw deflate of `input`: a sync flush leaves the stream open on a byte boundary for the next
/// segment; `last` writes the final block.
fn deflate(input: &[u8], level: Compression, last: bool) -> Vec<u8> {
    let mut c = Compress::new(level, false);
    let mut out = Vec::with_capacity(input.len() / 4 + 64);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        out.reserve(64 * 1024);
        let done = c.total_in() as usize;
        // Only a misuse of the stream can fail here; the state is local, so it cannot happen.
        let status = c
            .compress_vec(&input[done..], &mut out, flush)
            .unwrap_or(Status::StreamEnd);
        let consumed = c.total_in() as usize == input.len();
        if status == Status::StreamEnd || (!last && consumed && out.len() < out.capacity()) {
            return out;
        }
    }
}

/// The snapshot's part: its chunks (for the next publish to reuse, and for plain text), and their
/// deflate bytes joined once per publish, so that a scrape sends one buffer for them, not hundreds.
#[derive(Debug, Default)]
pub(crate) struct Derived {
    pub(crate) chunks: Vec<Arc<Segment>>,
    deflate: Bytes,
    crc: crc32fast::Hasher,
    len: usize,
}

impl Derived {
    pub(crate) fn new(chunks: Vec<Arc<Segment>>) -> Derived {
        let mut crc = crc32fast::Hasher::new();
        for c in &chunks {
            crc.combine(&c.crc);
        }
        let deflate: Vec<u8> = chunks
            .iter()
            .flat_map(|c| c.deflate.iter().copied())
            .collect();
        let len = chunks.iter().map(|c| c.len).sum();
        Derived {
            chunks,
            deflate: deflate.into(),
            crc,
            len,
        }
    }
}

/// One encoded exposition, as served: the parts are sent one after another without copying.
#[derive(Debug, Clone)]
pub struct Encoded {
    derived: Arc<Derived>,
    pub(crate) history: Arc<Derived>,
    rest_text: Bytes,
    gzip: [Bytes; 5],
    pub(crate) at: Instant,
}

impl Encoded {
    pub(crate) fn join(derived: &Arc<Derived>, history: &Arc<Derived>, rest: &Segment) -> Encoded {
        let mut crc = derived.crc.clone();
        crc.combine(&history.crc);
        crc.combine(&rest.crc);
        let len = derived.len + history.len + rest.len;
        // Member header: deflate, no name, no mtime, unknown OS (RFC 1952).
        const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        let mut trailer = Vec::with_capacity(8);
        trailer.extend_from_slice(&crc.finalize().to_le_bytes());
        trailer.extend_from_slice(&(len as u32).to_le_bytes());
        Encoded {
            derived: derived.clone(),
            history: history.clone(),
            rest_text: rest.text(),
            gzip: [
                Bytes::from_static(&HEADER),
                derived.deflate.clone(),
                history.deflate.clone(),
                rest.deflate.clone(),
                trailer.into(),
            ],
            at: Instant::now(),
        }
    }

    /// The whole text exposition in one buffer (tests and tools; the server sends the parts).
    pub fn text(&self) -> Bytes {
        concat(&self.text_parts())
    }

    fn text_parts(&self) -> Vec<Bytes> {
        self.derived
            .chunks
            .iter()
            .chain(&self.history.chunks)
            .map(|c| c.text())
            .chain([self.rest_text.clone()])
            .collect()
    }

    /// The whole gzip body in one buffer.
    pub fn gzip(&self) -> Bytes {
        concat(&self.gzip)
    }

    /// The buffers of the response body, gzip or plain, in order; none is empty.
    pub fn parts(&self, gzip: bool) -> Vec<Bytes> {
        let parts = match gzip {
            true => self.gzip.to_vec(),
            false => self.text_parts(),
        };
        parts.into_iter().filter(|b| !b.is_empty()).collect()
    }
}

fn concat(parts: &[Bytes]) -> Bytes {
    parts.concat().into()
}

/// Lines of a family per chunk: small enough that a cycle in which a few running runs advanced
/// recompresses a small share, large enough that chunks still compress well. At 100 000 real runs
/// the 63 running ones change a quarter of 2 000-line chunks (30 ms to compress again) and less of
/// 500-line ones (17–22 ms), for a body 5 % larger.
const CHUNK_LINES: usize = 500;

/// Chunks of an exposition given in parts (each starting with a family), compressed, reusing the
/// compressed bytes of `previous` chunks whose text is the same. Chunks start at every family and
/// every [`CHUNK_LINES`] lines within one, so a changed value changes one chunk, and a series added
/// or gone shifts only its own family's. The chunks to compress are shared between two threads.
pub(crate) fn compress_chunks(parts: &[&[u8]], previous: &[Arc<Segment>]) -> Vec<Arc<Segment>> {
    let known: HashMap<(u64, usize), &Arc<Segment>> =
        previous.iter().map(|c| ((c.hash, c.len), c)).collect();
    let mut pieces: Vec<&[u8]> = Vec::new();
    for text in parts {
        cut_chunks(text, &mut pieces);
    }
    let mut chunks: Vec<Option<Arc<Segment>>> = pieces
        .iter()
        .map(|p| known.get(&(chunk_hash(p), p.len())).map(|c| Arc::clone(c)))
        .collect();
    let fresh: Vec<usize> = (0..pieces.len()).filter(|&i| chunks[i].is_none()).collect();
    let compress = |ids: &[usize]| -> Vec<(usize, Segment)> {
        ids.iter()
            .map(|&i| {
                let text = pieces[i].to_vec();
                (i, Segment::new(text, Compression::default(), false, false))
            })
            .collect()
    };
    let bytes: usize = fresh.iter().map(|&i| pieces[i].len()).sum();
    // A small part (the history re-encoded on a scrape) is not worth a thread.
    let done = if bytes < 256 * 1024 {
        compress(&fresh)
    } else {
        let (first, second) = fresh.split_at(halfway(fresh.iter().map(|&i| pieces[i].len())));
        let (mut done, rest) = in_parallel(|| compress(first), || compress(second));
        done.extend(rest);
        done
    };
    for (i, segment) in done {
        chunks[i] = Some(Arc::new(segment));
    }
    chunks.into_iter().flatten().collect()
}

/// Cuts `text` into chunk pieces: at every `# HELP` line (a family's first) and every
/// [`CHUNK_LINES`] lines within a family.
fn cut_chunks<'t>(text: &'t [u8], pieces: &mut Vec<&'t [u8]>) {
    let (mut start, mut lines) = (0, 0);
    let mut at = 0;
    while at < text.len() {
        let end = memchr_newline(&text[at..]).map_or(text.len(), |i| at + i + 1);
        // A family starts with its HELP line; the encoder writes HELP then TYPE.
        let family_start = text[at..].starts_with(b"# HELP ");
        if (family_start || lines == CHUNK_LINES) && at > start {
            pieces.push(&text[start..at]);
            (start, lines) = (at, 0);
        }
        lines += 1;
        at = end;
    }
    if text.len() > start {
        pieces.push(&text[start..]);
    }
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// A 64-bit hash of a chunk's text (with its length, it says the text is unchanged: a false match
/// has odds of 2^-64).
fn chunk_hash(piece: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x6d6c_666c_6f77).hash_one(piece)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::tests::gunzip;

    /// `families` families of `lines` series each; `bump` changes the value of one series.
    fn exposition(families: usize, lines: usize, bump: Option<(usize, usize)>) -> Vec<u8> {
        let mut t = String::new();
        for f in 0..families {
            t.push_str(&format!("# HELP f{f} Family {f}\n# TYPE f{f} gauge\n"));
            for l in 0..lines {
                let v = if bump == Some((f, l)) { 2 } else { 1 };
                t.push_str(&format!("f{f}{{series=\"{l}\"}} {v}\n"));
            }
        }
        t.into_bytes()
    }

    fn gzip_of(chunks: Vec<Arc<Segment>>) -> Vec<u8> {
        let rest = Segment::new(b"rest 1\n".to_vec(), Compression::default(), true, true);
        gunzip(&Encoded::join(&Arc::new(Derived::new(chunks)), &Arc::default(), &rest).gzip())
    }

    #[test]
    fn chunks_start_at_families_and_every_chunk_lines() {
        let text = exposition(3, CHUNK_LINES + 10, None);
        let chunks = compress_chunks(&[&text], &[]);
        // Per family: HELP, TYPE and the first CHUNK_LINES - 2 series, then the rest.
        assert_eq!(chunks.len(), 6);
        let lines: Vec<usize> = chunks
            .iter()
            .map(|c| c.text().iter().filter(|&&b| b == b'\n').count())
            .collect();
        assert_eq!(lines, [CHUNK_LINES, 12, CHUNK_LINES, 12, CHUNK_LINES, 12]);
        assert!(chunks[2].text().starts_with(b"# HELP f1 "));
        assert_eq!(gzip_of(chunks), [text, b"rest 1\n".to_vec()].concat());
    }

    #[test]
    fn a_large_exposition_is_compressed_on_two_threads_in_order() {
        // Over the 256 KiB below which the chunks are compressed on the calling thread.
        let text = exposition(4, 10_000, None);
        assert!(text.len() > 256 * 1024);
        let chunks = compress_chunks(&[&text[..text.len() / 2], &text[text.len() / 2..]], &[]);
        assert_eq!(gzip_of(chunks), [text, b"rest 1\n".to_vec()].concat());
    }

    #[test]
    fn an_unchanged_chunk_keeps_its_compressed_bytes() {
        // Three families of two chunks each.
        let lines = CHUNK_LINES * 3 / 2;
        let first = compress_chunks(&[&exposition(3, lines, None)], &[]);
        assert_eq!(first.len(), 6);
        let same = compress_chunks(&[&exposition(3, lines, None)], &first);
        assert!(first.iter().zip(&same).all(|(a, b)| Arc::ptr_eq(a, b)));
        // One value changed in the second family's second chunk: that chunk alone is new.
        let text = exposition(3, lines, Some((1, CHUNK_LINES + 10)));
        let changed = compress_chunks(&[&text], &first);
        let fresh: Vec<usize> = (0..changed.len())
            .filter(|&i| !Arc::ptr_eq(&first[i], &changed[i]))
            .collect();
        assert_eq!(fresh, [3]);
        assert_eq!(gzip_of(changed), [text, b"rest 1\n".to_vec()].concat());
        // An empty exposition has no chunks.
        assert!(compress_chunks(&[b""], &first).is_empty());
    }

    #[test]
    fn joined_segments_are_one_gzip_member_of_the_three_parts() {
        let a: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("a{{i=\"{i}\"}} {i}\n").into_bytes())
            .collect();
        let h = b"h_total 2\n".to_vec();
        let b = b"b_total 1\n".to_vec();
        let part = |text: &Vec<u8>| {
            Arc::new(Derived::new(vec![Arc::new(Segment::new(
                text.clone(),
                Compression::best(),
                false,
                false,
            ))]))
        };
        for x in [a.clone(), Vec::new()] {
            for m in [h.clone(), Vec::new()] {
                for y in [b.clone(), Vec::new()] {
                    let rest = Segment::new(y.clone(), Compression::default(), true, true);
                    let e = Encoded::join(&part(&x), &part(&m), &rest);
                    let whole = [x.clone(), m.clone(), y].concat();
                    assert_eq!(e.text().as_ref(), whole.as_slice());
                    assert_eq!(gunzip(&e.gzip()), whole);
                }
            }
        }
    }
}
