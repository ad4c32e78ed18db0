//! A streaming message scanner: walks the tagged-message headers of a byte stream that arrives
//! in arbitrary chunks, without buffering or copying, and reports each message as it ends.
//!
//! The relay forwards bytes as they arrive; the scanner tells it where messages end and what
//! the first body byte said (the status of a ReadyForQuery), which is all pooling decisions need.

use super::FrameError;

/// A message the scanner saw end inside the chunk it was fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    /// Offset in the chunk where the message began, or `None` when it began in an earlier chunk.
    pub start: Option<usize>,
    /// Offset in the chunk just past the message's last byte.
    pub end: usize,
    /// The first body byte (the status of a ReadyForQuery), 0 for an empty body.
    pub first_byte: u8,
}

/// Position inside a stream of messages. The relay starts a fresh one at each message
/// boundary where it picks up a stream again.
#[derive(Debug, Clone, Default)]
pub struct Scanner {
    header: [u8; 5],
    header_len: u8,
    tag: u8,
    first_byte: u8,
    want_first: bool,
    /// Body bytes still to come of the current message.
    remaining: u32,
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner::default()
    }

    /// True between messages: nothing of a message has been seen without its end.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }

    /// Feeds the next chunk of the stream, calling `on_message` for every message that ends in
    /// it. A length field below 4 or above `max_len` (tag included) is an error.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        max_len: usize,
        mut on_message: impl FnMut(Message),
    ) -> Result<(), FrameError> {
        let mut pos = 0;
        let mut start = None;
        while pos < chunk.len() {
            if self.remaining > 0 {
                if self.want_first {
                    self.first_byte = chunk[pos];
                    self.want_first = false;
                }
                let take = (self.remaining as usize).min(chunk.len() - pos);
                pos += take;
                self.remaining -= take as u32;
                if self.remaining == 0 {
                    on_message(self.message(start, pos));
                }
                continue;
            }
            if self.header_len == 0 {
                start = Some(pos);
            }
            let at = self.header_len as usize;
            let take = (5 - at).min(chunk.len() - pos);
            self.header[at..at + take].copy_from_slice(&chunk[pos..pos + take]);
            self.header_len += take as u8;
            pos += take;
            if self.header_len < 5 {
                break;
            }
            self.header_len = 0;
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            if len < 4 {
                return Err(FrameError::BadLength(len as usize));
            }
            if len as usize >= max_len {
                return Err(FrameError::TooLong {
                    len: len as usize + 1,
                    max: max_len,
                });
            }
            self.tag = self.header[0];
            self.remaining = len - 4;
            self.first_byte = 0;
            self.want_first = self.remaining > 0;
            if self.remaining == 0 {
                on_message(self.message(start, pos));
            }
        }
        Ok(())
    }

    fn message(&self, start: Option<usize>, end: usize) -> Message {
        Message {
            tag: self.tag,
            start,
            end,
            first_byte: self.first_byte,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(scanner: &mut Scanner, chunk: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        scanner.feed(chunk, 1 << 20, |m| out.push(m)).unwrap();
        out
    }

    const STREAM: &[u8] = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I";

    #[test]
    fn reports_every_message_in_one_chunk() {
        let mut s = Scanner::new();
        let msgs = collect(&mut s, STREAM);
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            msgs[0],
            Message {
                tag: b'C',
                start: Some(0),
                end: 14,
                first_byte: b'S'
            }
        );
        assert_eq!(
            msgs[1],
            Message {
                tag: b'Z',
                start: Some(14),
                end: 20,
                first_byte: b'I'
            }
        );
        assert!(s.at_boundary());
    }

    #[test]
    fn same_messages_when_split_at_every_byte() {
        for split in 1..STREAM.len() {
            let mut s = Scanner::new();
            let mut msgs = collect(&mut s, &STREAM[..split]);
            msgs.extend(collect(&mut s, &STREAM[split..]));
            let tags: Vec<(u8, u8)> = msgs.iter().map(|m| (m.tag, m.first_byte)).collect();
            assert_eq!(tags, vec![(b'C', b'S'), (b'Z', b'I')], "split at {split}");
            assert!(s.at_boundary());
        }
    }

    #[test]
    fn start_is_unknown_for_a_message_begun_in_an_earlier_chunk() {
        let mut s = Scanner::new();
        assert!(collect(&mut s, &STREAM[..16]).len() == 1);
        assert!(!s.at_boundary());
        let msgs = collect(&mut s, &STREAM[16..]);
        assert_eq!(msgs[0].start, None);
        assert_eq!(msgs[0].end, 4);
    }

    #[test]
    fn rejects_bad_and_oversized_lengths() {
        let mut s = Scanner::new();
        assert_eq!(
            s.feed(b"Q\0\0\0\x02", 100, |_| {}),
            Err(FrameError::BadLength(2))
        );
        let mut s = Scanner::new();
        assert!(matches!(
            s.feed(b"Q\x7f\xff\xff\xff", 100, |_| {}),
            Err(FrameError::TooLong { .. })
        ));
    }
}
