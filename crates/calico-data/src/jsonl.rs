//! JSON Lines files read line by line: blank lines are skipped, so is the
//! byte-order mark some editors write at the start of a UTF-8 file, and a
//! line that is not UTF-8 is named by its number (a whole-file read would
//! name only the file).

use std::io::BufRead;

/// Why a line could not be read.
#[derive(Debug)]
pub enum LineError {
    /// The OS failed the read.
    Io(std::io::Error),
    /// Line `line` (1-based) is not UTF-8 from byte `byte` (1-based) on.
    NotUtf8 {
        /// The line's number.
        line: usize,
        /// The first byte that is not UTF-8, counted from the line's start.
        byte: usize,
    },
}

impl LineError {
    /// Where the error is ("line N"), for messages that name the place
    /// apart from the problem.
    pub fn context(&self) -> String {
        match self {
            LineError::Io(_) => "reading".into(),
            LineError::NotUtf8 { line, .. } => format!("line {line}"),
        }
    }

    /// What is wrong, without the place.
    pub fn problem(&self) -> String {
        match self {
            LineError::Io(e) => e.to_string(),
            LineError::NotUtf8 { byte, .. } => {
                format!("not UTF-8 text (byte {byte} of the line); JSON Lines files are UTF-8")
            }
        }
    }
}

/// The non-blank lines of a JSON Lines reader, each with its 1-based
/// number, without the line ending.
pub struct JsonLines<R> {
    reader: R,
    line: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> JsonLines<R> {
    /// Lines of `reader`.
    pub fn new(reader: R) -> Self {
        JsonLines {
            reader,
            line: 0,
            buf: Vec::new(),
        }
    }
}

impl JsonLines<std::io::BufReader<std::fs::File>> {
    /// Lines of the file at `path`.
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        Ok(Self::new(std::io::BufReader::with_capacity(1 << 20, file)))
    }
}

impl<R: BufRead> Iterator for JsonLines<R> {
    type Item = Result<(usize, String), LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(LineError::Io(e))),
            }
            self.line += 1;
            let text = match std::str::from_utf8(&self.buf) {
                Ok(t) => t,
                Err(e) => {
                    return Some(Err(LineError::NotUtf8 {
                        line: self.line,
                        byte: e.valid_up_to() + 1,
                    }))
                }
            };
            let mut text = text.trim_end_matches(['\n', '\r']);
            if self.line == 1 {
                text = text.trim_start_matches('\u{feff}');
            }
            if !text.trim().is_empty() {
                return Some(Ok((self.line, text.to_string())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8]) -> Vec<Result<(usize, String), String>> {
        JsonLines::new(bytes)
            .map(|r| r.map_err(|e| format!("{}: {}", e.context(), e.problem())))
            .collect()
    }

    #[test]
    fn blank_lines_endings_and_the_byte_order_mark_are_dropped() {
        let got = lines("\u{feff}{}\r\n\n  \n[1]\n{\"a\": 2}".as_bytes());
        let want = vec![
            Ok((1, "{}".to_string())),
            Ok((4, "[1]".to_string())),
            Ok((5, "{\"a\": 2}".to_string())),
        ];
        assert_eq!(got, want);
        // Only the first line's mark is one.
        assert_eq!(
            lines("{}\n\u{feff}{}\n".as_bytes())[1],
            Ok((2, "\u{feff}{}".into()))
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_named() {
        let got = lines(b"{}\n{\"id\": \"ab\xff\"}\n{}\n");
        assert_eq!(got[0], Ok((1, "{}".to_string())));
        let e = got[1].clone().unwrap_err();
        assert!(
            e.starts_with("line 2: not UTF-8 text (byte 11 of the line)"),
            "{e}"
        );
    }
}
