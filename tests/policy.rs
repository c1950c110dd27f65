//! Upload policy through the real proxy to the real origin: one table, every rule, and for each
//! case the status, the reason header, whether the upload reached the origin and what it stored.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::*;

/// The default max_size of the policy proxy: small, so "exactly max" and "max + 1" are cheap.
const MAX: usize = 100 * 1024;
const RESTRICTED: &str = "IS11111111111111111111111111111111";
const NO_SNIFF: &str = "IS22222222222222222222222222222222";
const NEEDS_SIZE: &str = "IS33333333333333333333333333333333";
const DEFAULT: &str = "IS44444444444444444444444444444444";

fn policy_config(origin: &Origin) -> ProxyConfig {
    ProxyConfig::to(&origin.url).with(&format!(
        "uploads:\n  max_size: {MAX}\nservices:\n  {RESTRICTED}:\n    uploads: {{max_size: 1KiB, allowed_types: [image/png]}}\n  {NO_SNIFF}:\n    uploads: {{sniff: false}}\n  {NEEDS_SIZE}:\n    uploads: {{require_content_size: true}}\n  {DEFAULT}: {{}}\n"
    ))
}

/// How the body goes on the wire.
#[derive(Clone)]
enum Framing {
    /// `Content-Length` of the body, one write.
    Length,
    /// No length header added (the case's headers say what they say), one write.
    AsGiven,
    /// `Transfer-Encoding: chunked`, with these chunk sizes (the rest in a last chunk).
    Chunked(Vec<usize>),
    /// `Content-Length`, written in two parts with a pause between them, so the proxy reads
    /// them as two chunks.
    SplitAt(usize),
}

struct Case {
    name: &'static str,
    service: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    framing: Framing,
    status: u16,
    reason: Option<&'static str>,
    /// A refusal of a body the proxy has whole before going upstream: nothing may reach it.
    judged_whole: bool,
}

fn case(
    name: &'static str,
    content_type: &str,
    body: Vec<u8>,
    status: u16,
    reason: Option<&'static str>,
) -> Case {
    Case {
        name,
        service: DEFAULT,
        headers: vec![("Content-Type", content_type.to_string())],
        body,
        framing: Framing::Length,
        status,
        reason,
        judged_whole: false,
    }
}

impl Case {
    fn on(mut self, service: &'static str) -> Case {
        self.service = service;
        self
    }
    fn header(mut self, name: &'static str, value: &str) -> Case {
        self.headers.push((name, value.to_string()));
        self
    }
    fn without_type(mut self) -> Case {
        self.headers.retain(|(n, _)| *n != "Content-Type");
        self
    }
    fn framed(mut self, framing: Framing) -> Case {
        self.framing = framing;
        self
    }
    fn judged_whole(mut self) -> Case {
        self.judged_whole = true;
        self
    }
}

/// `magic` followed by filler that makes every case's bytes unique (the origin stores equal
/// bytes once, and each accepted case must add one file).
fn bytes(magic: &[u8], len: usize, salt: u8) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend(
        (0..len.saturating_sub(magic.len())).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)),
    );
    out
}

fn form(boundary: &str, parts: &[Part]) -> Vec<u8> {
    multipart_with(boundary, parts)
}

/// A form whose first part has the given head and a PNG, followed by a `file` part with an ELF.
fn ambiguous_form(boundary: &str, first_head: &str) -> Vec<u8> {
    let mut body = format!("--{boundary}\r\n{first_head}\r\n\r\n").into_bytes();
    body.extend(bytes(b"\x89PNG\r\n\x1a\n", 256, 97));
    body.extend(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
    body.extend(elf());
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// A form for the boundary `a\b` (quoted as `"a\\b"`): a PNG part delimited by `--ab`, which a
/// parser that drops the escape reads, then an ELF part delimited by `--a\b`, which one that
/// keeps it reads.
fn escaped_boundary_form() -> Vec<u8> {
    let mut body = b"--ab\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ok.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    body.extend(bytes(b"\x89PNG\r\n\x1a\n", 256, 96));
    body.extend(b"\r\n--ab--\r\n--a\\b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n");
    body.extend(elf());
    body.extend(b"\r\n--a\\b--\r\n");
    body
}

/// A form whose first part has the given head and an ELF (the file for a parser that reads
/// that head as naming `file`), followed by a `file` part with a PNG.
fn ambiguous_form_reversed(boundary: &str, first_head: &str) -> Vec<u8> {
    let mut body = format!("--{boundary}\r\n{first_head}\r\n\r\n").into_bytes();
    body.extend(elf());
    body.extend(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
    body.extend(bytes(b"\x89PNG\r\n\x1a\n", 256, 95));
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// A form whose `file` part (text/plain, an ELF) has its content start exactly where the
/// proxy's 64 KiB of inspection end, after a padding field.
fn file_part_at_the_inspection_limit(boundary: &str) -> Vec<u8> {
    let pad_head = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"pad\"\r\n\r\n");
    let file_head = format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\nContent-Type: text/plain\r\n\r\n");
    let padding = 64 * 1024 - pad_head.len() - file_head.len();
    let mut body = pad_head.into_bytes();
    body.extend(std::iter::repeat_n(b'p', padding));
    body.extend(file_head.as_bytes());
    body.extend(elf());
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

fn form_type(boundary: &str) -> String {
    format!("multipart/form-data; boundary={boundary}")
}

fn elf() -> Vec<u8> {
    bytes(b"\x7fELF\x02\x01\x01\0", 512, 1)
}

fn pe() -> Vec<u8> {
    let mut b = bytes(b"MZ", 512, 2);
    b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    b
}

fn cases() -> Vec<Case> {
    let png = |salt| bytes(b"\x89PNG\r\n\x1a\n", 2048, salt);
    let jpeg = |salt| bytes(b"\xff\xd8\xff\xe0", 2048, salt);
    let pdf = |salt| bytes(b"%PDF-1.7\n", 2048, salt);
    let b = "mg-7e1d";
    let file_part = |ty: Option<&'static str>, body: &'static [u8]| {
        form(b, &[("file", Some("f.bin"), ty, body)])
    };
    let leaked = |v: Vec<u8>| -> &'static [u8] { Vec::leak(v) };
    vec![
        // Content type of raw uploads.
        case("raw png", "image/png", png(1), 201, None),
        case("raw jpeg", "image/jpeg", jpeg(2), 201, None),
        case(
            "type case and parameters ignored",
            "IMAGE/PNG; charset=binary",
            png(3),
            201,
            None,
        ),
        case(
            "no content type",
            "",
            png(4),
            400,
            Some("content_type_missing"),
        )
        .without_type(),
        case(
            "curl's form default",
            "application/x-www-form-urlencoded",
            png(5),
            400,
            Some("content_type_missing"),
        ),
        case(
            "not a media type",
            "png",
            png(6),
            400,
            Some("content_type_missing"),
        ),
        case(
            "type not allowed",
            "application/zip",
            bytes(b"PK\x03\x04", 256, 7),
            415,
            Some("type_not_allowed"),
        ),
        case(
            "executable type not allowed",
            "application/x-msdownload",
            pe(),
            415,
            Some("type_not_allowed"),
        ),
        case(
            "text/plain utf-8",
            "text/plain; charset=utf-8",
            "grüße, ünïcödé ".repeat(20).into_bytes(),
            201,
            None,
        ),
        case(
            "text/plain not utf-8",
            "text/plain",
            bytes(b"\xff\xfe\x00\x00", 256, 8),
            415,
            Some("sniff_mismatch"),
        ),
        // Sniffing.
        case(
            "ELF sent as image/png",
            "image/png",
            elf(),
            415,
            Some("sniff_mismatch"),
        ),
        case(
            "PNG sent as application/pdf",
            "application/pdf",
            png(9),
            415,
            Some("sniff_mismatch"),
        ),
        case(
            "JPEG sent as image/png",
            "image/png",
            jpeg(10),
            415,
            Some("sniff_mismatch"),
        ),
        case(
            "script sent as text/plain",
            "text/plain",
            b"#!/bin/sh\necho hi\n".to_vec(),
            415,
            Some("sniff_mismatch"),
        ),
        case(
            "PE sent as video/mp4",
            "video/mp4",
            pe(),
            415,
            Some("sniff_mismatch"),
        ),
        case(
            "Mach-O sent as audio/mpeg",
            "audio/mpeg",
            bytes(b"\xcf\xfa\xed\xfe", 512, 11),
            415,
            Some("sniff_mismatch"),
        ),
        case("gif", "image/gif", bytes(b"GIF89a", 512, 12), 201, None),
        case(
            "webp",
            "image/webp",
            bytes(b"RIFF\x10\0\0\0WEBPVP8 ", 512, 13),
            201,
            None,
        ),
        case("bmp", "image/bmp", bytes(b"BM", 512, 14), 201, None),
        case("tiff", "image/tiff", bytes(b"II*\0", 512, 15), 201, None),
        case(
            "heic",
            "image/heic",
            bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", 512, 16),
            201,
            None,
        ),
        case(
            "avif",
            "image/avif",
            bytes(b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf", 512, 17),
            201,
            None,
        ),
        case(
            "mp4",
            "video/mp4",
            bytes(b"\0\0\0\x18ftypisom\0\0\0\0isommp41", 512, 18),
            201,
            None,
        ),
        case(
            "mov",
            "video/quicktime",
            bytes(b"\0\0\0\x14ftypqt  \0\0\0\0qt  ", 512, 19),
            201,
            None,
        ),
        case(
            "webm",
            "video/webm",
            bytes(b"\x1a\x45\xdf\xa3", 512, 20),
            201,
            None,
        ),
        case("mp3", "audio/mpeg", bytes(b"ID3\x04\0", 512, 21), 201, None),
        case("ogg", "audio/ogg", bytes(b"OggS\0\x02", 512, 22), 201, None),
        case(
            "wav",
            "audio/wav",
            bytes(b"RIFF\x10\0\0\0WAVEfmt ", 512, 23),
            201,
            None,
        ),
        case(
            "flac",
            "audio/flac",
            bytes(b"fLaC\0\0\0\x22", 512, 24),
            201,
            None,
        ),
        case(
            "aac",
            "audio/aac",
            bytes(b"\xff\xf1\x50\x80", 512, 25),
            201,
            None,
        ),
        case("pdf", "application/pdf", pdf(26), 201, None),
        case(
            "heic claim on plain mp4",
            "image/heic",
            bytes(b"\0\0\0\x18ftypisom\0\0\0\0isommp41", 512, 27),
            415,
            Some("sniff_mismatch"),
        ),
        case(
            "type with no known signature",
            "video/x-unknown",
            bytes(b"whatever", 512, 28),
            201,
            None,
        ),
        case(
            "sniff off lets a mismatch through",
            "image/png",
            jpeg(29),
            201,
            None,
        )
        .on(NO_SNIFF),
        case(
            "0-byte png",
            "image/png",
            Vec::new(),
            415,
            Some("sniff_mismatch"),
        ),
        case("0-byte text", "text/plain", Vec::new(), 201, None),
        // Multipart, both styles.
        case(
            "form: file part",
            &form_type(b),
            file_part(Some("image/png"), leaked(png(30))),
            201,
            None,
        ),
        case(
            "form: Media part + FileName",
            &form_type(b),
            form(
                b,
                &[
                    ("FileName", None, None, b"doc.pdf"),
                    ("Media", None, Some("application/pdf"), leaked(pdf(31))),
                ],
            ),
            201,
            None,
        ),
        case(
            "form: quoted boundary",
            "multipart/form-data; boundary=\"a.b:c\"",
            form(
                "a.b:c",
                &[("file", Some("x.png"), Some("image/png"), leaked(png(32)))],
            ),
            201,
            None,
        ),
        case(
            "form: missing boundary",
            "multipart/form-data",
            file_part(Some("image/png"), leaked(png(33))),
            400,
            Some("content_type_missing"),
        ),
        case(
            "form: part without type",
            &form_type(b),
            file_part(None, leaked(png(34))),
            400,
            Some("content_type_missing"),
        ),
        case(
            "form: part type not allowed",
            &form_type(b),
            file_part(Some("application/zip"), b"PK\x03\x04zip"),
            415,
            Some("type_not_allowed"),
        ),
        case(
            "form: ELF in a png part",
            &form_type(b),
            file_part(Some("image/png"), leaked(elf())),
            415,
            Some("sniff_mismatch"),
        ),
        // A proxy removes the headers `Connection` names (RFC 9110 7.6.1): the upstream would
        // see an upload other than the one judged (this form, untyped, stored whole).
        case(
            "form: Connection names Content-Type",
            &form_type(b),
            file_part(Some("image/png"), leaked(png(61))),
            400,
            Some("content_type_missing"),
        )
        .header("Connection", "keep-alive, Content-Type"),
        case(
            "raw: Connection names Content-Size",
            "image/png",
            png(62),
            400,
            Some("size_mismatch"),
        )
        .header("Content-Size", "2048")
        .header("Connection", "content-size"),
        case(
            "raw: Connection names only hop-by-hop options",
            "image/png",
            png(63),
            201,
            None,
        )
        .header("Connection", "keep-alive, te"),
        case(
            "form: no file part",
            &form_type(b),
            form(b, &[("other", None, None, b"x")]),
            400,
            Some("content_type_missing"),
        ),
        // Heads another multipart parser could read differently: a PNG judged here, an ELF
        // stored upstream. Refused outright.
        case(
            "form: NAME spelled in capitals, then a second file part",
            &form_type(b),
            ambiguous_form(b, "Content-Disposition: form-data; NAME=\"file\"\r\nContent-Type: image/png"),
            400,
            Some("content_type_missing"),
        ),
        case(
            "form: a boundary with an escape, `ab` or `a\\b` as the parser reads it",
            "multipart/form-data; boundary=\"a\\b\"",
            escaped_boundary_form(),
            400,
            Some("content_type_missing"),
        ),
        case(
            "form: an unquoted boundary with a space",
            "multipart/form-data; boundary=a b",
            form("a b", &[("file", Some("x.png"), Some("image/png"), leaked(png(59)))]),
            400,
            Some("content_type_missing"),
        ),
        case(
            "two Content-Type headers, the second an executable's",
            "image/png",
            png(60),
            400,
            Some("content_type_missing"),
        )
        .header("Content-Type", "application/x-msdownload"),
        case(
            "form: `name` in the filename, so that some parsers read no name, then a second file part",
            &form_type(b),
            ambiguous_form(b, "Content-Disposition: form-data; filename=\"my name.png\"; name=\"file\"\r\nContent-Type: image/png"),
            400,
            Some("content_type_missing"),
        ),
        case(
            "form: `name*=` before the name, then a second file part",
            &form_type(b),
            ambiguous_form(b, "Content-Disposition: form-data; name*=UTF-8''x; name=\"file\"\r\nContent-Type: image/png"),
            400,
            Some("content_type_missing"),
        ),
        case(
            "form: `name =file` hidden in another value of a decoy part with an ELF",
            &form_type(b),
            ambiguous_form_reversed(b, "Content-Disposition: form-data; x=\"a name =file;\"; name=\"decoy\"\r\nContent-Type: image/png"),
            400,
            Some("content_type_missing"),
        ),
        case(
            "form: the file part's content starts where the inspection ends",
            &form_type(b),
            file_part_at_the_inspection_limit(b),
            400,
            Some("content_type_missing"),
        ),
        case(
            "form: two Content-Type lines",
            &form_type(b),
            ambiguous_form(b, "Content-Disposition: form-data; name=\"file\"\r\nContent-Type: image/png\r\nContent-Type: application/x-elf"),
            400,
            Some("content_type_missing"),
        ),
        case(
            "form: part head split over two chunks",
            &form_type(b),
            file_part(Some("image/png"), leaked(png(35))),
            201,
            None,
        )
        .framed(Framing::SplitAt(40)),
        case(
            "form: split head, wrong content",
            &form_type(b),
            file_part(Some("image/png"), leaked(jpeg(36))),
            415,
            Some("sniff_mismatch"),
        )
        .framed(Framing::SplitAt(40)),
        // Declared sizes.
        case(
            "Content-Size -1",
            "image/png",
            png(37),
            400,
            Some("size_mismatch"),
        )
        .header("Content-Size", "-1"),
        case(
            "Content-Size 1e3",
            "image/png",
            png(38),
            400,
            Some("size_mismatch"),
        )
        .header("Content-Size", "1e3"),
        case(
            "Content-Size 2^64",
            "image/png",
            png(39),
            400,
            Some("size_mismatch"),
        )
        .header("Content-Size", "18446744073709551616"),
        case(
            "Content-Size with inner space",
            "image/png",
            png(40),
            400,
            Some("size_mismatch"),
        )
        .header("Content-Size", "20 48"),
        // Leading white space is not part of a header value (RFC 9110 5.5): " 2048" is 2048.
        case(
            "Content-Size with leading space",
            "image/png",
            png(41),
            201,
            None,
        )
        .header("Content-Size", " 2048"),
        case(
            "Content-Size disagrees",
            "image/png",
            png(42),
            400,
            Some("size_mismatch"),
        )
        .header("Content-Size", "2047")
        .judged_whole(),
        case("Content-Size matches", "image/png", png(43), 201, None)
            .header("Content-Size", "2048"),
        case(
            "two Content-Length headers",
            "image/png",
            png(44),
            400,
            Some("size_mismatch"),
        )
        .header("Content-Length", "2048")
        .header("Content-Length", "2048")
        .framed(Framing::AsGiven),
        case(
            "Content-Length with Transfer-Encoding",
            "image/png",
            png(45),
            400,
            Some("size_mismatch"),
        )
        .header("Content-Length", "2048")
        .framed(Framing::Chunked(vec![1024])),
        // Refused from the head alone: no body is sent.
        case(
            "declared over max_size",
            "image/png",
            Vec::new(),
            413,
            Some("too_large"),
        )
        .header("Content-Size", &(MAX + 1).to_string())
        .header("Content-Length", &(MAX + 1).to_string())
        .framed(Framing::AsGiven),
        case(
            "exactly max_size",
            "image/png",
            bytes(b"\x89PNG\r\n\x1a\n", MAX, 47),
            201,
            None,
        ),
        case(
            "max_size + 1",
            "image/png",
            bytes(b"\x89PNG\r\n\x1a\n", MAX + 1, 48),
            413,
            Some("too_large"),
        ),
        case(
            "chunked past max_size",
            "image/png",
            bytes(b"\x89PNG\r\n\x1a\n", MAX + 1, 49),
            413,
            Some("too_large"),
        )
        .framed(Framing::Chunked(vec![4096, 60000])),
        case(
            "chunked exactly max_size",
            "image/png",
            bytes(b"\x89PNG\r\n\x1a\n", MAX, 50),
            201,
            None,
        )
        .framed(Framing::Chunked(vec![4096, 60000])),
        // No body at all, but a declared size: the head alone would go upstream as a whole,
        // empty upload.
        case(
            "empty body declaring Content-Size",
            "text/plain",
            Vec::new(),
            400,
            Some("size_mismatch"),
        )
        .header("Content-Size", "100")
        .framed(Framing::AsGiven)
        .judged_whole(),
        case(
            "empty body declaring Content-Size, sniffing off",
            "image/png",
            Vec::new(),
            400,
            Some("size_mismatch"),
        )
        .on(NO_SNIFF)
        .header("Content-Size", "100")
        .framed(Framing::AsGiven)
        .judged_whole(),
        case(
            "chunked, ends short of Content-Size",
            "image/png",
            png(51),
            400,
            Some("size_mismatch"),
        )
        .header("Content-Size", "4096")
        .framed(Framing::Chunked(vec![1024])),
        case(
            "chunked, runs past Content-Size",
            "image/png",
            png(52),
            400,
            Some("size_mismatch"),
        )
        .header("Content-Size", "1024")
        .framed(Framing::Chunked(vec![512])),
        case(
            "chunked sniff mismatch",
            "image/png",
            jpeg(53),
            415,
            Some("sniff_mismatch"),
        )
        .framed(Framing::Chunked(vec![3, 100])),
        // Per-service rules.
        case(
            "service: only png",
            "image/jpeg",
            bytes(b"\xff\xd8\xff\xe0", 512, 54),
            415,
            Some("type_not_allowed"),
        )
        .on(RESTRICTED),
        case(
            "service: small png",
            "image/png",
            bytes(b"\x89PNG\r\n\x1a\n", 1024, 55),
            201,
            None,
        )
        .on(RESTRICTED),
        case(
            "service: png over its 1KiB",
            "image/png",
            bytes(b"\x89PNG\r\n\x1a\n", 1025, 56),
            413,
            Some("too_large"),
        )
        .on(RESTRICTED),
        case(
            "service: Content-Size required",
            "image/png",
            png(57),
            400,
            Some("size_mismatch"),
        )
        .on(NEEDS_SIZE),
        case(
            "service: Content-Size given",
            "image/png",
            png(58),
            201,
            None,
        )
        .on(NEEDS_SIZE)
        .header("Content-Size", "2048"),
    ]
}

/// Sends one case on a fresh connection and reads the answer.
fn send(proxy: SocketAddr, path: &str, case: &Case) -> RawResponse {
    let mut stream = TcpStream::connect(proxy).expect("connect");
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {proxy}\r\n");
    for (name, value) in &case.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = &case.body;
    let (extra, wire): (String, Vec<Vec<u8>>) = match &case.framing {
        Framing::Length => (
            format!("Content-Length: {}\r\n", body.len()),
            vec![body.clone()],
        ),
        Framing::AsGiven => (String::new(), vec![body.clone()]),
        Framing::SplitAt(at) => (
            format!("Content-Length: {}\r\n", body.len()),
            vec![body[..*at].to_vec(), body[*at..].to_vec()],
        ),
        Framing::Chunked(sizes) => (
            "Transfer-Encoding: chunked\r\n".into(),
            vec![chunked(body, sizes)],
        ),
    };
    head.push_str(&extra);
    head.push_str("\r\n");
    // The proxy may answer and stop reading early: write errors are its refusal, not ours.
    let _ = stream.write_all(head.as_bytes());
    for (i, part) in wire.iter().enumerate() {
        if i > 0 {
            // Lets the first part arrive as a chunk of its own.
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = stream.write_all(part);
        let _ = stream.flush();
    }
    read_response(&mut stream)
}

fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    for size in sizes.iter().copied().chain(std::iter::once(usize::MAX)) {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
        rest = tail;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn every_upload_rule_through_the_proxy() {
    let origin = Origin::start();
    let mut config = policy_config(&origin);
    config.log_level = "info";
    let proxy = Proxy::start(config);
    let cases = cases();
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let marker = format!("case{index}");
        let path = format!("/v1/Services/{}/Media?Filename={marker}", case.service);
        let stored_before = origin.files_in("content").len();
        let response = send(proxy.listen, &path, case);
        // Everything the origin saw of this case must be over before its store is counted.
        let mut seen = Vec::new();
        let settled = wait_for(Duration::from_secs(10), || {
            seen = origin.requests_for(&marker);
            seen.iter().all(|e| !e["status"].is_null())
        });
        let stored = origin.files_in("content").len() - stored_before;
        let reason = response.header("mediagate-reject");
        let accepted = case.status == 201;
        let mut problems = Vec::new();
        if response.status != case.status {
            problems.push(format!(
                "status {} (body {})",
                response.status, response.body
            ));
        }
        if reason != case.reason {
            problems.push(format!("reason {reason:?}"));
        }
        if stored != usize::from(accepted) {
            problems.push(format!("origin stored {stored} files"));
        }
        if !accepted {
            let json: serde_json::Value = serde_json::from_str(&response.body).unwrap_or_default();
            if json["status"] != case.status
                || !json["code"].is_u64()
                || !json["message"].is_string()
            {
                problems.push(format!("error body {}", response.body));
            }
            if !case.body.is_empty() && response.header("connection") != Some("close") {
                problems.push("the connection stays open after a refusal".into());
            }
            if seen.iter().any(|e| e["status"] == 201) {
                problems.push("the origin created a media".into());
            }
            if case.judged_whole && !seen.is_empty() {
                // The origin's own checks would refuse it too, and hide ours failing.
                problems.push("its head went upstream, with all its body".into());
            }
        }
        if !settled {
            problems.push("the origin never finished the request".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({}): {}",
                case.name,
                index,
                problems.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}\nproxy log:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        proxy.log()
    );

    // Every refusal was counted, by reason.
    proxy.wait_recorded(cases.len());
    let metrics = proxy.metrics_text();
    for reason in [
        "content_type_missing",
        "type_not_allowed",
        "sniff_mismatch",
        "size_mismatch",
        "too_large",
    ] {
        let expected = cases.iter().filter(|c| c.reason == Some(reason)).count();
        let counted: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("mediagate_rejections_total{")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(counted as usize, expected, "{reason}");
    }
    // One line per refusal, with the reason; never a body or a credential.
    let log = proxy.log();
    let refusals = cases.iter().filter(|c| c.reason.is_some()).count();
    assert_eq!(
        log.lines().filter(|l| l.contains("refused POST")).count(),
        refusals,
        "{log}"
    );
    assert!(log.contains("415 sniff_mismatch"), "{log}");
    for never in [
        "ELF",
        "PNG",
        "%PDF",
        AUTH_TOKEN,
        &basic(ACCOUNT, AUTH_TOKEN)[6..],
    ] {
        assert!(!log.contains(never), "{never:?} in the log:\n{log}");
    }
}

#[tokio::test]
async fn unlisted_services_can_be_refused() {
    let origin = Origin::start();
    let proxy =
        Proxy::start(policy_config(&origin).with("access:\n  allow_unlisted_services: false\n"));
    let upload = |service: String| {
        client()
            .post(proxy.url(&format!("/v1/Services/{service}/Media")))
            .header("Content-Type", "text/plain")
            .body("hello")
            .send()
    };
    let refused = upload(new_service()).await.unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(refused.headers()["mediagate-reject"], "forbidden_service");
    assert_eq!(
        upload(DEFAULT.to_string()).await.unwrap().status().as_u16(),
        201
    );
    assert_eq!(
        origin
            .journal()
            .iter()
            .filter(|e| e["status"] == 201)
            .count(),
        1
    );
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_read() {
    let origin = Origin::start();
    let proxy = Proxy::start(policy_config(&origin));
    let path = format!("/v1/Services/{DEFAULT}/Media");
    let body = bytes(b"\x89PNG\r\n\x1a\n", 90_000, 99);
    let length = body.len().to_string();

    let head = [
        ("Content-Type", "image/png"),
        ("Content-Length", length.as_str()),
        ("Expect", "100-continue"),
    ];
    let mut stream = open_upload(proxy.listen, &path, &head, b"");
    assert_eq!(read_response(&mut stream).status, 100);
    stream.write_all(&body).unwrap();
    assert_eq!(read_response(&mut stream).status, 201);

    // Refused while streaming after the 100: the client still gets the refusal.
    let head = [
        ("Content-Type", "image/png"),
        ("Transfer-Encoding", "chunked"),
        ("Expect", "100-continue"),
    ];
    let mut stream = open_upload(proxy.listen, &path, &head, b"");
    assert_eq!(read_response(&mut stream).status, 100);
    let _ = stream.write_all(&chunked(
        &bytes(b"\x89PNG\r\n\x1a\n", MAX + 1, 98),
        &[4096, 60_000],
    ));
    let refused = read_response(&mut stream);
    assert_eq!(refused.status, 413, "{}", refused.body);
    assert_eq!(refused.header("mediagate-reject"), Some("too_large"));

    // Refused on its head: the final answer comes at once and the body is never sent.
    let head = [
        ("Content-Type", "application/zip"),
        ("Content-Length", length.as_str()),
        ("Expect", "100-continue"),
    ];
    let mut stream = open_upload(proxy.listen, &path, &head, b"");
    let refused = read_response(&mut stream);
    assert_eq!(refused.status, 415);
    assert_eq!(refused.header("mediagate-reject"), Some("type_not_allowed"));
    assert_eq!(
        origin
            .journal()
            .iter()
            .filter(|e| e["status"] == 201)
            .count(),
        1
    );
}
