//! A small `multipart/form-data` parser over a body held in memory (the
//! body size is bounded before parsing).

/// One form field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The `name` of `Content-Disposition: form-data`.
    pub name: String,
    /// The `filename`, for file fields.
    pub filename: Option<String>,
    /// The part's `Content-Type`, if given.
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

/// Why a body is not valid multipart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed multipart body: {0}")]
pub struct MultipartError(pub String);

fn bad(msg: impl Into<String>) -> MultipartError {
    MultipartError(msg.into())
}

/// The `boundary` parameter of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let mut parts = content_type.split(';');
    let mime = parts.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(bad(format!(
            "expected Content-Type multipart/form-data, got {mime:?}"
        )));
    }
    for p in parts {
        let (k, v) = match p.split_once('=') {
            Some(kv) => kv,
            None => continue,
        };
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = v.trim().trim_matches('"');
            if v.is_empty() || v.len() > 200 {
                return Err(bad("boundary is empty or longer than 200 characters"));
            }
            return Ok(v.to_string());
        }
    }
    Err(bad("Content-Type has no boundary"))
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() || from > hay.len() - needle.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// A header parameter such as `name="image"` (quoted or bare).
fn param(header: &str, key: &str) -> Option<String> {
    for p in header.split(';').skip(1) {
        let (k, v) = p.split_once('=')?;
        if k.trim().eq_ignore_ascii_case(key) {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(v);
            return Some(v.replace("\\\"", "\""));
        }
    }
    None
}

/// Splits `body` into its parts.
pub fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>, MultipartError> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut pos = find(body, delim, 0).ok_or_else(|| bad("no boundary line in the body"))?;
    let mut parts = Vec::new();
    loop {
        pos += delim.len();
        if body[pos..].starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding, then CRLF.
        while pos < body.len() && (body[pos] == b' ' || body[pos] == b'\t') {
            pos += 1;
        }
        if !body[pos..].starts_with(b"\r\n") {
            return Err(bad("boundary line not followed by CRLF"));
        }
        pos += 2;
        let head_end =
            find(body, b"\r\n\r\n", pos).ok_or_else(|| bad("part headers are not terminated"))?;
        let head = std::str::from_utf8(&body[pos..head_end])
            .map_err(|_| bad("part headers are not UTF-8"))?;
        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in head.split("\r\n").filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("part header without a colon: {line:?}")))?;
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-disposition") {
                if !v.trim().to_ascii_lowercase().starts_with("form-data") {
                    return Err(bad("part is not form-data"));
                }
                name = param(v, "name");
                filename = param(v, "filename");
            } else if k.eq_ignore_ascii_case("content-type") {
                content_type = Some(v.trim().to_string());
            }
        }
        let data_start = head_end + 4;
        let mut close = b"\r\n".to_vec();
        close.extend_from_slice(delim);
        let data_end = find(body, &close, data_start)
            .ok_or_else(|| bad("a part is not closed by the boundary"))?;
        parts.push(Part {
            name: name.ok_or_else(|| bad("a part has no name"))?,
            filename,
            content_type,
            data: body[data_start..data_end].to_vec(),
        });
        pos = data_end + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_files() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"task\"\r\n\r\ncommon-parts\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n\x00\r\n--XyZ--\r\n";
        let b = boundary("multipart/form-data; boundary=XyZ").unwrap();
        let parts = parse(body, &b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "task");
        assert_eq!(parts[0].data, b"common-parts");
        assert_eq!(parts[1].filename.as_deref(), Some("a.png"));
        assert_eq!(parts[1].content_type.as_deref(), Some("image/png"));
        assert_eq!(parts[1].data, b"\x89PNG\r\n\x00");
    }

    #[test]
    fn rejects_malformed_bodies() {
        assert!(boundary("application/json").is_err());
        assert!(boundary("multipart/form-data").is_err());
        assert!(parse(b"nothing here", "XyZ").is_err());
        let unterminated = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue";
        assert!(parse(unterminated, "XyZ").is_err());
        let nameless = b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nv\r\n--XyZ--";
        assert!(parse(nameless, "XyZ").is_err());
    }
}
