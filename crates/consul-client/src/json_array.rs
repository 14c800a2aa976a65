//! A JSON array taken in chunk by chunk, each element handed on as soon as
//! its last byte has arrived.
//!
//! Why: a DC-wide `/v1/health/state/any` is tens of MiB of JSON (about
//! 380 bytes per check, 100,000 checks in a 5,000-service datacenter).
//! Buffered whole, the answer sits in memory twice (hyper's chunks, then
//! their contiguous copy) beside the value decoded from it. Split at its
//! top-level commas, each element is decoded from the chunk it arrived in
//! and the chunk is dropped: at most one element's text is ever copied.
//!
//! The splitter only tracks strings (with escapes) and bracket depth; the
//! element's own syntax is left to `serde_json`, which decodes it.

/// Where a JSON array's bytes went wrong, or where an element did not
/// decode: a JSON path (`(root)`, `[3]`, `[3].Status`) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeFailure {
    pub(crate) path: String,
    pub(crate) message: String,
}

/// Splits one JSON array into its elements' texts.
#[derive(Debug, Default)]
pub(crate) struct ArraySplitter {
    state: State,
    /// The beginning of an element whose end is in a later chunk.
    pending: Vec<u8>,
    /// Elements handed on so far: the index of the next one.
    elements: usize,
}

#[derive(Debug, Clone, Copy, Default)]
enum State {
    /// Before the opening `[`.
    #[default]
    Open,
    /// After `[`: an element or `]`.
    First,
    /// After `,`: an element.
    Next,
    /// Inside an element.
    Element(Scan),
    /// After an element: `,` or `]`.
    After,
    /// After `]`: whitespace only.
    Closed,
}

/// Progress through one element's text.
#[derive(Debug, Clone, Copy)]
struct Scan {
    /// Open `{` and `[` not closed yet.
    depth: u32,
    in_string: bool,
    /// The previous byte was a `\` inside a string.
    escaped: bool,
    /// A number, `true`, `false` or `null`: ends where a `,`, `]` or
    /// whitespace begins.
    bare: bool,
}

impl Scan {
    /// The element starting with `first`.
    fn starting_with(first: u8) -> Self {
        Self {
            depth: u32::from(matches!(first, b'{' | b'[')),
            in_string: first == b'"',
            escaped: false,
            bare: !matches!(first, b'{' | b'[' | b'"'),
        }
    }

    /// Scans on; returns the element's end (exclusive) if it is in `bytes`.
    fn end_in(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                // Strings are most of Consul's text: a tight search for the
                // next quote or backslash is faster than the state machine
                // (and than `memchr`, on strings this short).
                let at = i + bytes[i..]
                    .iter()
                    .position(|&byte| byte == b'"' || byte == b'\\')?;
                if bytes[at] == b'\\' {
                    self.escaped = true;
                } else {
                    self.in_string = false;
                    if self.depth == 0 {
                        return Some(at + 1);
                    }
                }
                i = at + 1;
            } else if self.bare {
                let byte = bytes[i];
                if matches!(byte, b',' | b']') || byte.is_ascii_whitespace() {
                    return Some(i);
                }
                i += 1;
            } else {
                match bytes[i] {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        None
    }
}

impl ArraySplitter {
    /// Takes the next chunk of the array's text; calls `each` with the
    /// index and the complete text of every element that ends in it.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        each: &mut impl FnMut(usize, &[u8]) -> Result<(), DecodeFailure>,
    ) -> Result<(), DecodeFailure> {
        let mut i = 0;
        // Where the current element began in this chunk (0 if in an
        // earlier one: its beginning is in `pending`).
        let mut start = 0;
        while i < chunk.len() {
            let byte = chunk[i];
            match self.state {
                State::Element(mut scan) => match scan.end_in(&chunk[i..]) {
                    Some(length) => {
                        let end = i + length;
                        if self.pending.is_empty() {
                            each(self.elements, &chunk[start..end])?;
                        } else {
                            self.pending.extend_from_slice(&chunk[..end]);
                            let text = std::mem::take(&mut self.pending);
                            each(self.elements, &text)?;
                            // Keep the allocation for the next straddler.
                            self.pending = text;
                            self.pending.clear();
                        }
                        self.elements += 1;
                        self.state = State::After;
                        i = end;
                    }
                    None => {
                        self.state = State::Element(scan);
                        break;
                    }
                },
                _ if byte.is_ascii_whitespace() => i += 1,
                State::Open if byte == b'[' => {
                    self.state = State::First;
                    i += 1;
                }
                State::First if byte == b']' => {
                    self.state = State::Closed;
                    i += 1;
                }
                State::First | State::Next if !matches!(byte, b',' | b']') => {
                    start = i;
                    self.state = State::Element(Scan::starting_with(byte));
                    i += 1;
                }
                State::After if byte == b',' => {
                    self.state = State::Next;
                    i += 1;
                }
                State::After if byte == b']' => {
                    self.state = State::Closed;
                    i += 1;
                }
                State::Open => return Err(self.failure("(root)", "expected a JSON array")),
                State::First | State::Next => {
                    return Err(self.failure(
                        &self.element_path(),
                        &format!("expected an element, found `{}`", char::from(byte)),
                    ));
                }
                State::After => {
                    return Err(self.failure(
                        &self.element_path(),
                        &format!(
                            "expected `,` or `]` after the element, found `{}`",
                            char::from(byte)
                        ),
                    ));
                }
                State::Closed => {
                    return Err(self.failure("(root)", "data after the end of the array"));
                }
            }
        }
        if matches!(self.state, State::Element(_)) {
            // The element goes on in the next chunk.
            self.pending.extend_from_slice(&chunk[start..]);
        }
        Ok(())
    }

    /// Checks that the array was complete.
    pub(crate) fn finish(&self) -> Result<(), DecodeFailure> {
        match self.state {
            State::Closed => Ok(()),
            State::Open => Err(self.failure("(root)", "empty answer, expected a JSON array")),
            State::First | State::Next | State::Element(_) | State::After => Err(self.failure(
                &self.element_path(),
                "the answer ended before the array did",
            )),
        }
    }

    fn element_path(&self) -> String {
        format!("[{}]", self.elements)
    }

    fn failure(&self, path: &str, message: &str) -> DecodeFailure {
        DecodeFailure {
            path: path.to_owned(),
            message: message.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` cut into chunks of `size` bytes; returns the elements.
    fn split(text: &str, size: usize) -> Result<Vec<String>, DecodeFailure> {
        let mut splitter = ArraySplitter::default();
        let mut elements = Vec::new();
        for chunk in text.as_bytes().chunks(size.max(1)) {
            splitter.feed(chunk, &mut |index, bytes| {
                assert_eq!(index, elements.len(), "indexes count up from 0");
                elements.push(String::from_utf8(bytes.to_vec()).expect("utf-8"));
                Ok(())
            })?;
        }
        splitter.finish()?;
        Ok(elements)
    }

    const ARRAY: &str = r#" [ {"A": "x, }] \" \\", "B": [1, {"C": null}]},
        "a string, with ] and \" inside", 12.5e3 ,true,null, [], {} ]
        "#;

    #[test]
    fn elements_come_out_whole_however_the_text_is_cut() {
        let expected = vec![
            r#"{"A": "x, }] \" \\", "B": [1, {"C": null}]}"#.to_owned(),
            r#""a string, with ] and \" inside""#.to_owned(),
            "12.5e3".to_owned(),
            "true".to_owned(),
            "null".to_owned(),
            "[]".to_owned(),
            "{}".to_owned(),
        ];
        // Every cut: one byte at a time, sizes that split escapes and
        // numbers, and the whole text at once.
        for size in 1..=ARRAY.len() {
            assert_eq!(
                split(ARRAY, size).expect("a valid array"),
                expected,
                "chunks of {size} bytes"
            );
        }
    }

    #[test]
    fn an_empty_array_has_no_elements() {
        assert_eq!(split(" [ ] ", 1).expect("valid"), Vec::<String>::new());
        assert_eq!(split("[]", 10).expect("valid"), Vec::<String>::new());
    }

    #[test]
    fn malformed_arrays_are_named_where_they_break() {
        let failure = |text: &str| split(text, 3).expect_err(text);
        let cases = [
            ("", "(root)", "empty answer"),
            ("{}", "(root)", "expected a JSON array"),
            ("null", "(root)", "expected a JSON array"),
            ("[{}, {}", "[2]", "ended before the array did"),
            (r#"[{}, {"a": "b"#, "[1]", "ended before the array did"),
            ("[{}, ]", "[1]", "expected an element"),
            ("[,{}]", "[0]", "expected an element"),
            ("[{} {}]", "[1]", "expected `,` or `]`"),
            ("[{}] []", "(root)", "data after the end"),
        ];
        for (text, path, message) in cases {
            let DecodeFailure {
                path: at,
                message: why,
            } = failure(text);
            assert_eq!(at, path, "path for {text:?}");
            assert!(why.contains(message), "message for {text:?}: {why}");
        }
    }

    #[test]
    fn an_element_failure_stops_the_split() {
        let mut splitter = ArraySplitter::default();
        let mut seen = 0;
        let result = splitter.feed(b"[1, 2, 3]", &mut |index, _| {
            seen += 1;
            if index == 1 {
                Err(DecodeFailure {
                    path: "[1]".to_owned(),
                    message: "no".to_owned(),
                })
            } else {
                Ok(())
            }
        });
        assert_eq!(result.expect_err("element 1 fails").path, "[1]");
        assert_eq!(seen, 2, "nothing after the failing element is decoded");
    }
}
