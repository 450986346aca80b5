//! The answer parser is total: any bytes give a result or an error, never a
//! panic, and the strict, lenient and byte parsers agree (the invariants are
//! listed on `calico_text::parse::fuzz_parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| calico_text::parse::fuzz_parse(data));
