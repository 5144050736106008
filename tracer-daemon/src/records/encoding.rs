//! Paths and argv in JSON, losslessly.
//!
//! JSON strings must be UTF-8 but Linux names are bytes. A value that is
//! valid UTF-8 is written as is (exact). A value that is not is written
//! with every byte outside valid UTF-8 as `%XX` and every literal `%` as
//! `%25`, and is listed in the record's `backend_metadata.non_utf8` with
//! its raw bytes in base64, so a reader knows which values to decode and
//! can always get the original bytes back.

use base64::Engine as _;

/// Encodes `bytes`; the flag says whether the percent encoding was used.
pub fn encode(bytes: &[u8]) -> (String, bool) {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return (s.to_string(), false);
    }
    let mut out = String::with_capacity(bytes.len() + 16);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' {
                out.push_str("%25");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    (out, true)
}

/// Inverse of `encode` for a value that was percent-encoded.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    unescape(s, b'%')
}

/// The bytes of `s` where each `<escape>XX` (two hex digits) stands for
/// one byte; `None` when an escape is cut short or not hex.
pub(crate) fn unescape(s: &str, escape: u8) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == escape {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Collects the non-UTF-8 values of one record as it is built.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    /// (encoded value, raw bytes in base64)
    non_utf8: Vec<(String, String)>,
}

impl Encoder {
    pub fn encode(&mut self, bytes: &[u8]) -> String {
        let (s, encoded) = encode(bytes);
        if encoded {
            self.non_utf8.push((s.clone(), base64(bytes)));
        }
        s
    }

    /// The record's `non_utf8` list: every value encoded so far.
    pub(crate) fn non_utf8_json(&self) -> serde_json::Value {
        self.non_utf8
            .iter()
            .map(|(s, b)| serde_json::json!({"value": s, "raw_base64": b}))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_verbatim_even_with_percent() {
        assert_eq!(
            encode("/d/100%.txt".as_bytes()),
            ("/d/100%.txt".to_string(), false)
        );
        assert_eq!(encode("/d/é".as_bytes()).0, "/d/é");
    }

    #[test]
    fn non_utf8_round_trips() {
        for raw in [
            &b"/d/\xff\xfe.bin"[..],
            b"/d/50%\x80",
            b"\xc3",
            b"%%\xc3\xa9\xff%",
        ] {
            let (s, encoded) = encode(raw);
            assert!(encoded);
            assert_eq!(decode(&s).unwrap(), raw, "{s}");
        }
        assert_eq!(encode(b"/d/\xff").0, "/d/%FF");
    }
}
