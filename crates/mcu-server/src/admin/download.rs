//! Serving a recording file with HTTP range requests (RFC 9110, 14), so players can seek and
//! downloads can resume. One range per request; a multi-range request gets the whole file, which
//! the RFC allows.

use std::path::Path;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use warp::http::{header, HeaderValue, Response, StatusCode};
use warp::hyper::Body;

/// A byte range of a file of known length, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header: send everything.
    Whole,
    Partial(ByteRange),
    /// A well-formed range that lies outside the file: 416.
    Unsatisfiable,
}

/// Reads a `Range` header against a file of `len` bytes.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // A suffix: the last N bytes.
        match last.parse::<u64>() {
            Ok(0) => return RangeRequest::Unsatisfiable,
            Ok(n) if len > 0 => ByteRange {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            Ok(_) => return RangeRequest::Unsatisfiable,
            Err(_) => return RangeRequest::Whole,
        }
    } else {
        let Ok(start) = first.parse::<u64>() else {
            return RangeRequest::Whole;
        };
        let end = if last.is_empty() {
            len.saturating_sub(1)
        } else {
            match last.parse::<u64>() {
                Ok(end) if end >= start => end.min(len.saturating_sub(1)),
                _ => return RangeRequest::Whole,
            }
        };
        if start >= len {
            return RangeRequest::Unsatisfiable;
        }
        ByteRange { start, end }
    };
    RangeRequest::Partial(range)
}

/// The response for a GET of `path` (whose download name is `name`) with the given Range header.
pub async fn serve_file(
    path: &Path,
    name: &str,
    content_type: &str,
    range_header: Option<&str>,
) -> anyhow::Result<Response<Body>> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    // A recording still being written grows; this request serves what exists now.
    let len = file
        .metadata()
        .await
        .context("reading the file size")?
        .len();
    let mut response = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, content_type)
        .header(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
                .context("a recording id is a valid header value")?,
        );
    let (status, start, count) = match parse_range(range_header, len) {
        RangeRequest::Whole => (StatusCode::OK, 0, len),
        RangeRequest::Partial(r) => {
            response = response.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{len}", r.start, r.end),
            );
            (StatusCode::PARTIAL_CONTENT, r.start, r.end - r.start + 1)
        }
        RangeRequest::Unsatisfiable => {
            return Ok(response
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())?);
        }
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .context("seeking in the recording")?;
    let body = Body::wrap_stream(tokio_util::io::ReaderStream::new(file.take(count)));
    Ok(response
        .status(status)
        .header(header::CONTENT_LENGTH, count)
        .body(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, end })
    }

    #[test]
    fn ranges_read_as_rfc_9110_says() {
        assert_eq!(parse_range(None, 100), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), partial(0, 9));
        assert_eq!(parse_range(Some("bytes=90-"), 100), partial(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), partial(90, 99));
        assert_eq!(parse_range(Some("bytes=-500"), 100), partial(0, 99));
        assert_eq!(parse_range(Some("bytes=50-5000"), 100), partial(50, 99));
    }

    #[test]
    fn ranges_outside_the_file_are_unsatisfiable_and_nonsense_is_ignored() {
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=0-"), 0),
            RangeRequest::Unsatisfiable
        );
        for nonsense in [
            "items=0-1",
            "bytes=a-b",
            "bytes=9-2",
            "bytes=0-1,5-6",
            "bytes=5",
        ] {
            assert_eq!(
                parse_range(Some(nonsense), 100),
                RangeRequest::Whole,
                "{nonsense}"
            );
        }
    }
}
